// netloader-client: pulls a model from running netloader sources, verifies every chunk, and
// writes it out as safetensors (or only verifies it).

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "netloader/cli/cli_common.h"
#include "netloader/client.h"
#include "netloader/safetensors.h"

using namespace netloader;

namespace {

// Checks the checkpoint written to `dir` against the source's per-tensor digests. The files are
// mapped read-only rather than read into memory: no second copy of the model.
Status CheckWrittenCheckpoint(const std::string& dir, const LoadStats& stats) {
  Result<CheckpointLayout> layout = ReadCheckpointLayout(dir);
  if (!layout.ok()) return layout.status();
  std::vector<std::pair<void*, size_t>> mappings;
  ModelView view;
  Status status;
  for (const ShardLayout& shard : layout->shards) {
    const int fd = open(shard.path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat info {};
    void* base = MAP_FAILED;
    if (fd >= 0 && fstat(fd, &info) == 0 && info.st_size > 0) {
      base = mmap(nullptr, info.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    }
    if (fd >= 0) close(fd);
    if (base == MAP_FAILED) {
      status = Status(StatusCode::kUnavailable, "cannot read back " + shard.path);
      break;
    }
    mappings.emplace_back(base, info.st_size);
    for (const TensorSpec& t : shard.tensors) {
      view.tensors.push_back(
          {t.name, t.dtype, t.shape, static_cast<char*>(base) + t.file_offset, t.size_bytes});
    }
  }
  if (status.ok()) status = VerifyModel(view, stats);
  for (auto& [base, size] : mappings) munmap(base, size);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-client: pull a model from a running netloader source.\n"
      "Reads only the headers of --model to learn the expected tensor layout, allocates memory\n"
      "for it, and loads the tensors from the first --source that holds the same model and\n"
      "partition, verifying every chunk against the source's XXH3 digests. Then writes the\n"
      "checkpoint to --output (same shard files and metadata) or, with --verify-only, stops."};
  app.footer(cli::kExitCodeHelp);
  std::string model_path;
  std::string output_dir;
  bool verify_only = false;
  ClientOptions options;
  cli::CommonFlags common;
  common.log_level = "warn";  // the summary line says what happened; the library's INFO repeats it
  double register_timeout_s = options.register_timeout.count() / 1000.0;
  double connect_timeout_s = options.connect_timeout.count() / 1000.0;
  double stall_timeout_s = options.stall_timeout.count() / 1000.0;
  double busy_timeout_s = options.busy_timeout.count() / 1000.0;
  app.add_option("--source", options.sources,
                 "Source endpoint (tcp://HOST:PORT); repeat for fallbacks, tried in order")
      ->required();
  app.add_option("--model", model_path,
                 "Checkpoint whose headers give the expected layout (file, index.json or "
                 "directory); tensor data is not read")
      ->required();
  auto* output =
      app.add_option("--output", output_dir, "Directory to write the loaded checkpoint into");
  auto* verify = app.add_flag("--verify-only", verify_only, "Load and verify, but write nothing");
  bool skip_output_check = false;
  app.add_flag("--skip-output-check", skip_output_check,
               "Do not read --output back to check it against the source's per-tensor digests");
  output->excludes(verify);
  app.add_option("--window", options.window, "MPI receives in flight")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--register-timeout", register_timeout_s,
                 "Seconds a source has to answer registration")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--busy-timeout", busy_timeout_s,
                 "Seconds to keep retrying a busy source before trying the next")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--connect-timeout", connect_timeout_s, "Seconds for the MPI connection")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--stall-timeout", stall_timeout_s,
                 "Seconds without a chunk after which the transfer fails")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  common.Add(app);
  CLI11_PARSE(app, argc, argv);
  if (output_dir.empty() && !verify_only) {
    std::fprintf(stderr, "netloader-client: give --output DIR or --verify-only\n%s",
                 app.help().c_str());
    return cli::kExitUsage;
  }
  common.ApplyLogLevel();
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  Status applied = common.ApplyTo(options);
  if (!applied.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", applied.ToString().c_str());
    return cli::kExitUsage;
  }
  options.register_timeout = ms(register_timeout_s);
  options.connect_timeout = ms(connect_timeout_s);
  options.stall_timeout = ms(stall_timeout_s);
  options.busy_timeout = ms(busy_timeout_s);

  Result<CheckpointLayout> layout = ReadCheckpointLayout(model_path);
  if (!layout.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", layout.status().ToString().c_str());
    return cli::kExitBadModel;
  }
  Result<HostModel> model = HostModel::Allocate(*layout);
  if (!model.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", model.status().ToString().c_str());
    return cli::kExitFailure;
  }

  cli::ProgressLine progress;
  const auto start = std::chrono::steady_clock::now();
  options.progress = [&](uint64_t done, uint64_t total) {
    progress.Bar(done, total,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  Result<LoadStats> stats = Load(options, model->view());
  progress.Finish();

  nlohmann::json summary;
  int exit_code = cli::kExitOk;
  if (!stats.ok()) {
    exit_code = cli::ExitCodeFor(stats.status().code());
    if (exit_code == cli::kExitBadModel) exit_code = cli::kExitFailure;
    summary = {{"ok", false},
               {"error", StatusCodeName(stats.status().code())},
               {"message", stats.status().message()}};
    std::fprintf(stderr, "netloader-client: %s\n", stats.status().ToString().c_str());
  } else {
    summary = {{"ok", true},
               {"source", stats->source},
               {"bytes", stats->bytes},
               {"tensors", stats->tensors},
               {"chunks", stats->chunks},
               {"seconds", stats->seconds},
               {"gbps", stats->gbps},
               {"register_seconds", stats->register_seconds},
               {"transport_seconds", stats->transport_seconds},
               {"connect_seconds", stats->connect_seconds},
               {"transfer_seconds", stats->transfer_seconds},
               {"verified", true}};
    nlohmann::json attempts = nlohmann::json::array();
    for (const SourceAttempt& a : stats->attempts) {
      attempts.push_back({{"source", a.source}, {"status", a.status.ToString()}});
    }
    summary["attempts"] = attempts;
    if (!output_dir.empty()) {
      const auto write_start = std::chrono::steady_clock::now();
      Status written = WriteCheckpoint(output_dir, *layout, model->view());
      const double write_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - write_start).count();
      summary["output"] = output_dir;
      summary["write_seconds"] = write_seconds;
      // Read the written files back and check them against the source's own digests, so what
      // is on disk is known to be what the source holds, not only what arrived in memory.
      if (written.ok() && !skip_output_check) {
        written = CheckWrittenCheckpoint(output_dir, *stats);
        summary["output_verified"] = written.ok();
      }
      if (!written.ok()) {
        std::fprintf(stderr, "netloader-client: writing %s: %s\n", output_dir.c_str(),
                     written.ToString().c_str());
        summary["ok"] = false;
        summary["error"] = StatusCodeName(written.code());
        summary["message"] = written.message();
        exit_code = cli::kExitOutput;
      }
    }
  }
  if (common.json) {
    std::cout << summary.dump() << std::endl;
  } else if (stats.ok()) {
    std::printf(
        "loaded %llu tensors, %llu bytes (%s) from %s in %.3f s (%.2f GB/s), %llu chunks "
        "verified%s\n",
        static_cast<unsigned long long>(stats->tensors),
        static_cast<unsigned long long>(stats->bytes), cli::HumanBytes(stats->bytes).c_str(),
        stats->source.c_str(), stats->seconds, stats->gbps,
        static_cast<unsigned long long>(stats->chunks),
        exit_code != cli::kExitOk || output_dir.empty() ? ""
        : skip_output_check                             ? ("; wrote " + output_dir).c_str()
                                                        : ("; wrote " + output_dir +
                               ", read it back and checked it against the source's digests")
                                  .c_str());
  }
  return exit_code;
}
