#include "tests/bench/samples.h"

#include <cstdio>
#include <fstream>
#include <utility>

namespace netloader::bench {

using json = nlohmann::json;

void Samples::Add(const std::string& row, json sample) {
  samples_[row].push_back(std::move(sample));
}

Samples::Stat Samples::Of(const std::string& row, const std::string& field) const {
  std::vector<double> v;
  for (const json& s : samples_.at(row)) v.push_back(s[field].get<double>());
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

// Each ratio compares two measurements taken moments apart, which survives the drift of a noisy
// machine better than a ratio of medians.
double Samples::PairedRatio(const std::string& row, const std::string& baseline,
                            const std::string& field) const {
  return Quantile(PairedRatios(row, baseline, field), 0.5);
}

std::vector<double> Samples::PairedRatios(const std::string& row, const std::string& baseline,
                                          const std::string& field) const {
  return PairedSorted(row, baseline, [&](const json& a, const json& b) {
    return a[field].get<double>() / b[field].get<double>();
  });
}

double Samples::PairedTimeRatio(const std::string& baseline, const std::string& baseline_field,
                                const std::string& row, const std::string& field) const {
  const auto faster = [&](const json& a, const json& b) {
    return b[baseline_field].get<double>() / a[field].get<double>();
  };
  return Quantile(PairedSorted(row, baseline, faster), 0.5);
}

double Samples::Quantile(const std::vector<double>& sorted, double q) {
  return sorted.empty() ? 0 : sorted[static_cast<size_t>(q * sorted.size())];
}

json WithRate(json sample) {
  sample["gbps"] = sample["bytes"].get<double>() / sample["seconds"].get<double>() / 1e9;
  return sample;
}

std::string Human(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.0f MiB", bytes / (1 << 20));
  return text;
}

void WriteReport(const std::string& path, const json& report) {
  if (!path.empty()) std::ofstream(path) << report.dump(2) << "\n";
}

}  // namespace netloader::bench
