#pragma once

// Every sample of one run, by row, and the statistics its tables are made of. The machines are
// noisy: a figure is a median over repetitions, and a claim is a ratio of two rows measured in
// the same repetition, moments apart ("paired"), never a ratio of two medians.

#include <algorithm>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace netloader::bench {

// The samples, one JSON object per repetition and row, in the order they were taken. Reading a
// row that has none throws std::out_of_range (a bench reports only rows it ran).
class Samples {
 public:
  struct Stat {
    double median = 0, min = 0, max = 0;
  };

  void Add(const std::string& row, nlohmann::json sample);
  bool Has(const std::string& row) const { return samples_.count(row) > 0; }
  const std::vector<nlohmann::json>& All(const std::string& row) const { return samples_.at(row); }

  // The median (the upper one of an even count), least and greatest of `field` over `row`.
  Stat Of(const std::string& row, const std::string& field) const;

  // Median over repetitions of row[i][field] / baseline[i][field] (the rate by default).
  double PairedRatio(const std::string& row, const std::string& baseline,
                     const std::string& field = "gbps") const;

  // Those ratios, sorted: their spread shows how noisy the machine was.
  std::vector<double> PairedRatios(const std::string& row, const std::string& baseline,
                                   const std::string& field = "gbps") const;

  // The same for two durations: median of baseline[i][baseline_field] / row[i][field], how fast
  // `row` ran against `baseline` (above 1: faster).
  double PairedTimeRatio(const std::string& baseline, const std::string& baseline_field,
                         const std::string& row, const std::string& field) const;

  // pair(row[i], baseline[i]) for every repetition both have, sorted.
  template <typename F>
  std::vector<double> PairedSorted(const std::string& row, const std::string& baseline,
                                   F pair) const {
    const auto& a = samples_.at(row);
    const auto& b = samples_.at(baseline);
    std::vector<double> values;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) values.push_back(pair(a[i], b[i]));
    std::sort(values.begin(), values.end());
    return values;
  }

  // The q-quantile of sorted values (0.5: the median, as Of() takes it), 0 when there are none.
  static double Quantile(const std::vector<double>& sorted, double q);

 private:
  std::map<std::string, std::vector<nlohmann::json>> samples_;
};

// `sample` with "gbps" added: its "bytes" over its "seconds", in GB/s.
nlohmann::json WithRate(nlohmann::json sample);

// `bytes` as whole MiB ("64 MiB").
std::string Human(double bytes);

// Writes `report` to `path` as indented JSON; nothing when `path` is empty (no --json).
void WriteReport(const std::string& path, const nlohmann::json& report);

}  // namespace netloader::bench
