#include "tests/bench/local_report.h"

#include <sys/utsname.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>

#include "tests/bench/machine.h"

namespace netloader::bench {
namespace {

using json = nlohmann::json;

// The report, section by section in the order it prints; out_ gathers the JSON.
class LocalReport {
 public:
  LocalReport(const Options& options, const Samples& samples, const LocalRun& run)
      : o_(options), s_(samples), run_(run) {}

  int Write();

 private:
  void Config();
  void Machine();
  void RateRow(const std::string& name, const std::string& label);
  void RateTable();
  void ChecksumAndPhases();
  void OutputRows();
  void CpuTable();
  void ConcurrentTable();
  void Overhead();
  double GrowthPer1000(const std::string& field) const;
  void Memory();
  void ChunkRows();
  void PartialRow();

  double Median(const std::string& row, const std::string& field) const {
    return s_.Of(row, field).median;
  }

  const Options& o_;
  const Samples& s_;
  const LocalRun& run_;
  json out_;
};

int LocalReport::Write() {
  Config();
  Machine();
  RateTable();
  OutputRows();
  ChecksumAndPhases();
  CpuTable();
  if (!o_.focus) {
    ConcurrentTable();
    Overhead();
    Memory();
    ChunkRows();
  }
  WriteReport(o_.json_path, out_);
  return 0;
}

void LocalReport::Config() {
  utsname uts{};
  uname(&uts);
  out_["config"] = {{"bytes", run_.bytes},
                    {"tensors", run_.tensors},
                    {"checkpoint", o_.checkpoint.empty() ? "generated" : o_.checkpoint},
                    {"chunk_bytes", o_.chunk_bytes},
                    {"window", o_.window},
                    {"pml", "ucx (UCX_TLS=tcp, lo)"},
                    {"reps", o_.reps},
                    {"cores", std::thread::hardware_concurrency()},
                    {"kernel", std::string(uts.release)},
                    {"quick", o_.quick}};
}

// Measured after the rows, with every role process gone.
void LocalReport::Machine() {
  out_["machine"] = MachineRecord(o_.chunk_bytes);
  PrintMachine(out_["machine"]);
}

void LocalReport::RateRow(const std::string& name, const std::string& label) {
  if (!s_.Has(name)) return;
  const Samples::Stat s = s_.Of(name, "gbps");
  const std::vector<double> ratios = s_.PairedRatios(name, "raw_mpi");
  const double ratio = Samples::Quantile(ratios, 0.5);
  const double q1 = Samples::Quantile(ratios, 0.25), q3 = Samples::Quantile(ratios, 0.75);
  std::printf("%-28s %9.2f %9.2f %9.2f %9.0f%% %5.0f-%.0f%%\n", label.c_str(), s.median, s.min,
              s.max, 100 * ratio, 100 * q1, 100 * q3);
  out_["results"][name] = {{"gbps_median", s.median},
                           {"gbps_min", s.min},
                           {"gbps_max", s.max},
                           {"vs_raw", ratio},
                           {"vs_raw_quartiles", {q1, q3}},
                           {"samples", s_.All(name)}};
}

void LocalReport::RateTable() {
  std::printf("\n%-28s %9s %9s %9s %10s %12s\n", "measurement (GB/s)", "median", "min", "max",
              "vs raw MPI", "quartiles");
  std::printf("%-28s %9s %9s %9s %10s %12s\n", "", "", "", "", "(paired)", "of the pairs");
  RateRow("raw_mpi", "raw MPI (ceiling)");
  RateRow("netloader", "netloader end to end");
  RateRow("netloader_overlap", "  MPI started while allocating");
  RateRow("netloader_adopt", "  rendezvous from the source");
  RateRow("netloader_preinit", "  MPI started beforehand");
  RateRow("netloader_no_checksum", "  checksums off");
  RateRow("netloader_direct", "  received in place");
  RateRow("disk_warm", "disk, page cache");
  RateRow("cat_warm", "  cat, page cache");
  RateRow("disk_cold", "disk, cold");
  RateRow("dd_cold", "  dd bs=4M, cold");
}

// --output: straight into the files against into memory and then written; a resumed pull.
void LocalReport::OutputRows() {
  if (!s_.Has("output_streamed") || !s_.Has("output_in_memory")) return;
  std::printf("\n%-28s %12s %14s\n", "pull into files", "seconds", "peak RSS MiB");
  for (const auto& [row, label] : std::vector<std::pair<std::string, std::string>>{
           {"output_streamed", "--output, into the files"},
           {"output_in_memory", "into memory, written, fsync"},
           {"output_resumed", "resumed after a stop at half"}}) {
    if (!s_.Has(row)) continue;
    const double seconds = Median(row, "seconds"), rss = Median(row, "max_rss_kib") / 1024;
    std::printf("%-28s %12.3f %14.0f\n", label.c_str(), seconds, rss);
    out_["results"][row] = {
        {"seconds_median", seconds}, {"max_rss_mib_median", rss}, {"samples", s_.All(row)}};
  }
  const double faster =
      s_.PairedTimeRatio("output_in_memory", "seconds", "output_streamed", "seconds");
  std::printf("into the files: %.2fx as fast as into memory and then written (paired)\n", faster);
  out_["summary"]["output_streamed_vs_in_memory"] = faster;
  if (s_.Has("output_resumed")) {
    const double share = Median("output_resumed", "bytes_received") / run_.bytes;
    std::printf("a resumed pull received %.0f%% of the model\n", 100 * share);
    out_["summary"]["output_resumed_received_share"] = share;
  }
}

void LocalReport::ChecksumAndPhases() {
  const double hash_gbps = out_["machine"]["hash_gbps"].get<double>();
  const double received_gbps = out_["machine"]["hash_received_gbps"].get<double>();
  // Paired like the ratios: (on - off) / on = 1 - off_time / on_time = 1 - on_gbps / off_gbps.
  const double checksum_cost = 1 - s_.PairedRatio("netloader_preinit", "netloader_no_checksum");
  // What hashing the model's bytes alone takes, as a share of the load: from a warm block, and
  // as the client meets them, just received.
  const double load_seconds = Median("netloader_preinit", "seconds");
  const double hash_share = run_.bytes / (hash_gbps * 1e9) / load_seconds;
  const double received_share =
      received_gbps > 0 ? run_.bytes / (received_gbps * 1e9) / load_seconds : 0;
  std::printf(
      "checksum cost: %.1f%% of the load, paired (hashing alone: %.1f%% at %.1f GB/s warm, "
      "%.1f%% at %.1f GB/s on data just received)\n",
      100 * checksum_cost, 100 * hash_share, hash_gbps, 100 * received_share, received_gbps);
  // Where "MPI started beforehand" loses against raw MPI, which times its data phase only: the
  // load's phases before its data (registering, the MPI connect), and the data phase itself.
  const double data_phase =
      s_.PairedTimeRatio("raw_mpi", "seconds", "netloader_preinit", "transfer");
  const double before_data =
      1 - s_.PairedTimeRatio("netloader_preinit", "transfer", "netloader_preinit", "seconds");
  std::printf(
      "MPI started beforehand, by phase: registering %.1f ms and connecting %.1f ms (raw MPI's "
      "own connect, not in its row: %.1f ms) are %.1f%% of the load; its data phase alone runs "
      "at %.0f%% of raw MPI (paired)\n",
      1e3 * Median("netloader_preinit", "register"), 1e3 * Median("netloader_preinit", "connect"),
      1e3 * Median("raw_mpi", "connect"), 100 * before_data, 100 * data_phase);
  out_["summary"] = {{"preinit_vs_raw", s_.PairedRatio("netloader_preinit", "raw_mpi")},
                     {"preinit_before_data_share", before_data},
                     {"preinit_data_phase_vs_raw", data_phase},
                     {"checksum_cost", checksum_cost},
                     {"hash_gbps", hash_gbps},
                     {"hash_received_gbps", received_gbps},
                     {"hash_received_share", received_share}};
}

// CPU per GB moved, each side: a figure that moves less between machines than GB/s.
void LocalReport::CpuTable() {
  std::printf("\n%-28s %14s %14s\n", "CPU seconds per GB", "sending side", "receiving side");
  for (const auto& [name, label] : std::vector<std::pair<std::string, std::string>>{
           {"raw_mpi", "raw MPI"},
           {"netloader_preinit", "netloader, MPI beforehand"},
           {"netloader_no_checksum", "  checksums off"}}) {
    if (!s_.Has(name)) continue;
    const double gb = run_.bytes / 1e9;
    const double send = Median(name, "server_cpu_seconds") / gb;
    const double receive = Median(name, "cpu_seconds") / gb;
    std::printf("%-28s %14.3f %14.3f\n", label.c_str(), send, receive);
    out_["results"][name]["cpu_seconds_per_gb"] = {{"sending", send}, {"receiving", receive}};
  }
}

void LocalReport::ConcurrentTable() {
  for (int k : run_.ks) {
    const std::string n = "netloader_x" + std::to_string(k), r = "raw_mpi_x" + std::to_string(k);
    const double nl = Median(n, "gbps"), rw = Median(r, "gbps");
    const double ratio = s_.PairedRatio(n, r);
    std::printf("%-28s %9.2f %9s %9s %9.0f%%  (raw x%d: %.2f; slowest/fastest client %.2f)\n",
                (std::to_string(k) + " clients, aggregate").c_str(), nl, "", "", 100 * ratio, k, rw,
                Median(n, "spread"));
    out_["results"][n] = {{"gbps_median", nl},    {"raw_gbps_median", rw},
                          {"vs_raw", ratio},      {"spread_median", Median(n, "spread")},
                          {"samples", s_.All(n)}, {"raw_samples", s_.All(r)}};
  }
  const double vs_cold_disk = s_.PairedRatio("netloader", "disk_cold");
  std::printf("faster than a cold disk read: %.2fx (paired)\n", vs_cold_disk);
  out_["summary"].update({{"end_to_end_vs_raw", s_.PairedRatio("netloader", "raw_mpi")},
                          {"overlap_vs_raw", s_.PairedRatio("netloader_overlap", "raw_mpi")},
                          {"adopt_vs_raw", s_.PairedRatio("netloader_adopt", "raw_mpi")},
                          {"vs_cold_disk", vs_cold_disk}});
  ReportDiskVsTools(s_, &out_["summary"]);
}

void LocalReport::Overhead() {
  std::printf("\n%-28s %10s %10s %10s %10s %10s\n", "fixed overhead (ms)", "total", "register",
              "connect", "transfer", "MPI start");
  for (int count : run_.tiny_counts) {
    const std::string n = "overhead_" + std::to_string(count);
    std::printf("%-28s %10.1f %10.1f %10.1f %10.1f %10.1f\n",
                (std::to_string(count) + " tensors").c_str(), 1e3 * Median(n, "seconds"),
                1e3 * Median(n, "register"), 1e3 * Median(n, "connect"),
                1e3 * Median(n, "transfer"), 1e3 * Median(n, "transport"));
    out_["results"][n] = {{"seconds_median", Median(n, "seconds")}, {"samples", s_.All(n)}};
  }
  const double base = Median("overhead_" + std::to_string(run_.tiny_counts[0]), "seconds");
  const double per_1000 = GrowthPer1000("seconds");
  std::printf(
      "growth: %.2f ms per 1,000 tensors (least squares over every sample; register %+.2f, "
      "connect %+.2f, transfer %+.2f)\n",
      1e3 * per_1000, 1e3 * GrowthPer1000("register"), 1e3 * GrowthPer1000("connect"),
      1e3 * GrowthPer1000("transfer"));
  out_["summary"].update(
      {{"overhead_ms", 1e3 * base}, {"overhead_ms_per_1000_tensors", 1e3 * per_1000}});
}

// Seconds of `field` per 1,000 tensors: the least-squares slope over every sample of the tiny
// models (one noisy median, such as an MPI connect, cannot make or break it).
double LocalReport::GrowthPer1000(const std::string& field) const {
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (int count : run_.tiny_counts) {
    for (const json& sample : s_.All("overhead_" + std::to_string(count))) {
      const double x = count / 1000.0, y = sample[field].get<double>();
      n += 1, sx += x, sy += y, sxx += x * x, sxy += x * y;
    }
  }
  return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

void LocalReport::Memory() {
  const double model_mib = run_.bytes / double(1 << 20);
  const double client_rss_mib = Median("netloader", "max_rss_kib") / 1024.0;
  const double server_extra_mib = (run_.server_hwm_kib - run_.server_rss_before_kib) / 1024.0;
  const int k_max = run_.ks.back();
  std::printf(
      "\nmemory: model %.0f MiB; client peak RSS %.0f MiB (model + %.0f); server peak "
      "grew %.0f MiB during %d concurrent clients (%.1f MiB per client; window %.2g MiB)\n",
      model_mib, client_rss_mib, client_rss_mib - model_mib, server_extra_mib, k_max,
      server_extra_mib / k_max, static_cast<double>(o_.chunk_bytes * o_.window) / (1 << 20));
  out_["summary"].update({{"client_rss_over_model_mib", client_rss_mib - model_mib},
                          {"server_extra_mib_per_client", server_extra_mib / k_max}});
}

// Chunk-granular loads: paired per repetition like the ratios above.
void LocalReport::ChunkRows() {
  const double bytes = static_cast<double>(run_.bytes);
  const double resume_extra = Samples::Quantile(
      s_.PairedSorted("resume_killed", "resume_clean",
                      [](const json& killed, const json& clean) {
                        return killed["seconds"].get<double>() - clean["seconds"].get<double>();
                      }),
      0.5);
  const double resume_received = Median("resume_killed", "bytes_received") / bytes;
  std::printf(
      "\nresume: the first of two sources killed at half the load: %.2f s against %.2f s clean "
      "(+%.2f s, paired; a killed source is noticed when its connection closes); received "
      "%.3fx the model's bytes\n",
      Median("resume_killed", "seconds"), Median("resume_clean", "seconds"), resume_extra,
      resume_received);
  const double delta_pulled = Median("delta", "pulled") / bytes;
  const double delta_time = 1 / s_.PairedRatio("delta", "delta_full");
  std::printf(
      "delta: an older copy with ~2 %% of its chunks changed: %.2f %% of the bytes pulled "
      "(%.1f MiB); %.3f s against %.3f s for a full load (%.0f %%, paired)\n",
      100 * delta_pulled, Median("delta", "pulled") / (1 << 20), Median("delta", "seconds"),
      Median("delta_full", "seconds"), 100 * delta_time);
  PartialRow();
  for (const char* name : {"resume_clean", "resume_killed", "delta_full", "delta", "partial"}) {
    out_["results"][name] = {{"seconds_median", Median(name, "seconds")},
                             {"samples", s_.All(name)}};
  }
  out_["summary"].update({{"resume_extra_seconds", resume_extra},
                          {"resume_received_over_model", resume_received},
                          {"delta_pulled_fraction", delta_pulled},
                          {"delta_time_vs_full", delta_time}});
}

void LocalReport::PartialRow() {
  const double partial_bytes = Median("partial", "bytes") / run_.bytes;
  const double partial_time = s_.PairedRatio("partial", "delta_full", "seconds");
  std::printf(
      "partial: the even-numbered layers (%.1f %% of the bytes): %.3f s against %.3f s for a "
      "full load (%.0f %%, paired); registering %.1f ms against %.1f ms (the source builds the "
      "selection's stream once, then caches it)\n",
      100 * partial_bytes, Median("partial", "seconds"), Median("delta_full", "seconds"),
      100 * partial_time, 1e3 * Median("partial", "register"),
      1e3 * Median("delta_full", "register"));
  out_["summary"].update(
      {{"partial_bytes_fraction", partial_bytes}, {"partial_time_vs_full", partial_time}});
}

}  // namespace

int ReportLocal(const Options& options, const Samples& samples, const LocalRun& run) {
  return LocalReport(options, samples, run).Write();
}

void ReportDiskVsTools(const Samples& samples, json* summary) {
  const double vs_cat = samples.PairedRatio("disk_warm", "cat_warm");
  const double vs_dd = samples.PairedRatio("disk_cold", "dd_cold");
  std::printf(
      "disk load into memory: %.0f%% of cat's rate from the page cache, %.0f%% of dd's "
      "from a cold disk (paired)\n",
      100 * vs_cat, 100 * vs_dd);
  summary->update({{"disk_warm_vs_cat", vs_cat}, {"disk_cold_vs_dd", vs_dd}});
}

}  // namespace netloader::bench
