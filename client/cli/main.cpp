// netloader-client: pulls a model from running netloader sources, verifies every chunk, and
// writes it out as safetensors (or only verifies it); with --serve, serves it while it loads.

#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <nlohmann/json.hpp>

#include "client/cli/checkpoint_files.h"
#include "client/cli/flags.h"
#include "client/cli/status_print.h"
#include "netloader/client.h"
#include "netloader/safetensors.h"
#include "netloader/server.h"
#include "server/cli/cli_common.h"

using namespace netloader;

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr const char* kAbout =
    "netloader-client: pull a model from a running netloader source.\n"
    "Reads only the headers of --model to learn the expected tensor layout and loads the\n"
    "tensors from the first --source that holds the same model and partition, verifying every\n"
    "chunk against the source's XXH3 digests. A source that fails mid-transfer costs only the\n"
    "chunks in flight: the next --source is asked for the rest.\n"
    "With --output, the tensors go straight into the checkpoint's files there (same shard\n"
    "files and metadata), created as NAME.partial and renamed once complete and verified: the\n"
    "model is never held in memory (peak_rss_bytes in the summary), and the same command\n"
    "after an interruption resumes, pulling only what the partial files lack. With\n"
    "--verify-only it loads into memory and stops. With --tensors, only the tensors named are\n"
    "loaded and written,\n"
    "from any source that holds them (a whole model, another pipeline split).\n"
    "In the summary, bytes_received counts every chunk received or in flight over all\n"
    "sources, and attempts lists each source tried with the bytes it delivered.\n"
    "The summary gives the transfer's own time and rate (transfer_seconds, transfer_gbps)\n"
    "apart from the whole run's wall time (wall_seconds: reading --model, MPI start-up,\n"
    "registration, the transfer, writing and reading back --output).\n"
    "With --serve, this instance serves the model while it loads and after (a relay): other\n"
    "instances pointed at the same --source are redirected here when that source is at its\n"
    "--fanout limit, and get each chunk as soon as it is verified here. After the load it\n"
    "prints its summary and keeps serving until SIGINT/SIGTERM, then prints what it served.";

// One run: read the layout, allocate, optionally relay, load, write, then serve if relaying.
class ClientRun {
 public:
  explicit ClientRun(cli::ClientFlags& flags) : flags_(flags), options_(flags.options) {}

  int Run() {
    if (int code = Prepare(); code != cli::kExitOk) return code;
    if (int code = StartRelay(); code != cli::kExitOk) return code;
    if (!flags_.testing.start_file.empty()) {
      // Ready means MPI started too (Load reports a failure of it).
      if (transport_started_.valid()) (void)transport_started_.get();
      flags_.testing.WaitForStart("netloader-client");
    }
    Load();
    const int exit_code = Report();
    if (relay_ == nullptr || exit_code != cli::kExitOk) return exit_code;
    ServeAfterwards();
    return exit_code;
  }

 private:
  // The layout of --model (its selection with --tensors), --output's check, and the destination
  // memory (from --delta-from's older copy, or new). Returns the exit code of a failure, or 0.
  int Prepare() {
    // A relay takes the stop signals only once it serves a loaded model; until then they wait.
    if (flags_.relaying()) stop_signals_ = cli::BlockStopSignals();
    // MPI start-up (~140 ms, in a helper process) need not wait for the source when the
    // rendezvous is shared: it runs while the destination is allocated and faulted in.
    if (!options_.transport.rendezvous_uri.empty()) {
      transport_started_ = std::async(std::launch::async, InitializeTransport, options_.transport);
    }
    layout_ = ReadCheckpointLayout(flags_.model_path, LayoutRead::kHeadersOnly);
    if (!layout_.ok()) return Fail(layout_.status().ToString(), cli::kExitBadModel);
    if (!options_.tensors.empty()) {
      layout_ = SelectFromLayout(*layout_, options_.tensors);
      if (!layout_.ok()) {
        return Fail("--tensors: " + layout_.status().message() + " in --model " + flags_.model_path,
                    cli::kExitUsage);
      }
    }
    if (!flags_.output_dir.empty() && !flags_.overwrite) {
      std::string names;
      for (const std::string& f : cli::ExistingOutputFiles(flags_.output_dir, *layout_)) {
        names += (names.empty() ? "" : ", ") + f;
      }
      if (!names.empty()) {
        return Fail("--output " + flags_.output_dir + " already holds " + names +
                        "; nothing was loaded (give --overwrite to replace, or another directory)",
                    cli::kExitOutput);
      }
    }
    if (Streaming()) {
      // Straight into the files, resuming an interrupted pull's: the model is never in memory.
      output_ = MappedCheckpoint::Create(flags_.output_dir, *layout_);
      if (!output_.ok()) return Fail("--output: " + output_.status().ToString(), cli::kExitOutput);
      options_.destination_filled = output_->resumed();
      if (output_->resumed()) {
        std::fprintf(stderr,
                     "netloader-client: resuming the pull into %s: what is there is checked "
                     "against the source's digests, only what differs is pulled\n",
                     flags_.output_dir.c_str());
      }
      return cli::kExitOk;
    }
    model_ = flags_.delta_dir.empty()
                 ? HostModel::Allocate(*layout_)
                 : cli::ReadOlderCopy(flags_.delta_dir, *layout_, options_.tensors);
    if (!model_.ok()) {
      // Memory that could not be had is an internal failure; a bad --delta-from, a bad model.
      return Fail(model_.status().ToString(), model_.status().code() == StatusCode::kUnavailable
                                                  ? cli::kExitFailure
                                                  : cli::kExitBadModel);
    }
    options_.destination_filled = !flags_.delta_dir.empty();
    return cli::kExitOk;
  }

  int StartRelay() {
    if (!flags_.relaying()) return cli::kExitOk;
    Result<std::unique_ptr<Server>> started = Server::StartRelay(flags_.serving, Destination());
    if (!started.ok()) {
      return Fail("--serve: " + started.status().ToString(),
                  started.status().code() == StatusCode::kInvalidArgument ? cli::kExitUsage
                                                                          : cli::kExitUnavailable);
    }
    relay_ = std::move(*started);
    options_.relay = relay_.get();
    options_.cold_start_read = false;  // nothing here reads the checkpoint's data from storage
    cli::WriteEndpointFile(flags_.serve_endpoint_file, relay_->endpoint());
    std::fprintf(stderr, "netloader-client: serving while loading at %s\n",
                 relay_->endpoint().c_str());
    return cli::kExitOk;
  }

  void Load() {
    cli::ProgressLine progress;
    const auto start = Clock::now();
    options_.progress = [&](uint64_t done, uint64_t total) {
      progress.Bar(done, total, SecondsSince(start));
      flags_.testing.HoldIfDue("netloader-client", done, total);
    };
    // Into files (Streaming), each chunk's pages leave this process once it is verified.
    stats_ = netloader::Load(options_, Destination());
    progress.Finish();
  }

  // The summary (and --output), printed; returns the exit code.
  int Report() {
    nlohmann::json summary;
    int exit_code = cli::kExitOk;
    if (!stats_.ok()) {
      exit_code = cli::ExitCodeFor(stats_.status().code());
      if (exit_code == cli::kExitBadModel) exit_code = cli::kExitFailure;
      summary = {{"ok", false},
                 {"error", StatusCodeName(stats_.status().code())},
                 {"message", stats_.status().message()}};
      std::fprintf(stderr, "netloader-client: %s\n", stats_.status().ToString().c_str());
      if (Streaming()) {
        std::fprintf(stderr,
                     "netloader-client: the partial files stay in %s (*%s); the same command "
                     "resumes the pull\n",
                     flags_.output_dir.c_str(), MappedCheckpoint::kPartialSuffix);
      }
    } else {
      summary = Summary(*stats_);
      if (!flags_.output_dir.empty()) exit_code = WriteOutput(summary);
    }
    const double wall_seconds = SecondsSince(run_start_);
    summary["wall_seconds"] = wall_seconds;
    summary["peak_rss_bytes"] = PeakRssBytes();
    if (flags_.common.json) {
      std::cout << summary.dump() << std::endl;
    } else if (stats_.ok()) {
      PrintLoaded(wall_seconds, exit_code == cli::kExitOk);
    }
    return exit_code;
  }

  nlohmann::json Summary(const LoadStats& stats) const {
    nlohmann::json summary = {{"ok", true},
                              {"source", stats.source},
                              {"bytes", stats.bytes},
                              {"bytes_received", stats.bytes_received},
                              {"bytes_reused", stats.bytes_reused},
                              {"tensors", stats.tensors},
                              {"chunks", stats.chunks},
                              {"transfer_seconds", stats.transfer_seconds},
                              {"transfer_gbps", stats.transfer_gbps},
                              {"load_seconds", stats.seconds},
                              {"register_seconds", stats.register_seconds},
                              {"transport_seconds", stats.transport_seconds},
                              {"connect_seconds", stats.connect_seconds},
                              {"verified", true}};
    nlohmann::json attempts = nlohmann::json::array();
    for (const SourceAttempt& a : stats.attempts) {
      attempts.push_back(
          {{"source", a.source}, {"status", a.status.ToString()}, {"bytes", a.bytes}});
    }
    summary["attempts"] = attempts;
    if (relay_ != nullptr) summary["serving"] = relay_->endpoint();
    return summary;
  }

  // Writes --output, reads it back and checks it against the source's own digests, so what is
  // on disk is known to be what the source holds, not only what arrived in memory.
  int WriteOutput(nlohmann::json& summary) {
    const std::string& dir = flags_.output_dir;
    const auto write_start = Clock::now();
    Status written =
        Streaming() ? output_->Commit() : WriteCheckpoint(dir, *layout_, model_->view());
    summary["output"] = dir;
    summary["write_seconds"] = SecondsSince(write_start);
    summary["streamed"] = Streaming();
    if (Streaming()) summary["resumed"] = output_->resumed();
    // Streamed, every chunk was verified in the files' own pages as it arrived (or, resumed,
    // as it was found there): reading them back would hash the same pages again.
    if (written.ok() && Streaming()) summary["output_verified"] = true;
    if (written.ok() && !Streaming() && !flags_.skip_output_check) {
      written = cli::CheckWrittenCheckpoint(dir, *layout_, *stats_);
      summary["output_verified"] = written.ok();
    }
    if (written.ok()) return cli::kExitOk;
    std::fprintf(stderr, "netloader-client: writing %s: %s\n", dir.c_str(),
                 written.ToString().c_str());
    summary["ok"] = false;
    summary["error"] = StatusCodeName(written.code());
    summary["message"] = written.message();
    return cli::kExitOutput;
  }

  void PrintLoaded(double wall_seconds, bool written) const {
    const LoadStats& s = *stats_;
    const std::string& dir = flags_.output_dir;
    const std::string wrote =
        !written || dir.empty() ? ""
        : Streaming()           ? "; wrote " + dir + " as it arrived, every chunk verified there"
        : flags_.skip_output_check
            ? "; wrote " + dir
            : "; wrote " + dir + ", read it back and checked it against the source's digests";
    std::printf(
        "loaded %llu tensors, %llu bytes (%s) from %s: transfer %.3f s at %.2f GB/s, %.3f s wall "
        "in all; %llu chunks verified%s\n",
        static_cast<unsigned long long>(s.tensors), static_cast<unsigned long long>(s.bytes),
        cli::HumanBytes(s.bytes).c_str(), s.source.c_str(), s.transfer_seconds, s.transfer_gbps,
        wall_seconds, static_cast<unsigned long long>(s.chunks), wrote.c_str());
  }

  // Loaded: go on serving it, as any source, until told to stop.
  void ServeAfterwards() {
    std::fflush(stdout);
    const std::string stopped_by = cli::ServeUntilStopped(*relay_, stop_signals_);
    std::fprintf(stderr, "netloader-client: %s received, stopped serving\n", stopped_by.c_str());
    if (flags_.common.json) {
      std::cout << nlohmann::json{{"served", cli::ServerSummary(*relay_)}}.dump() << std::endl;
      return;
    }
    const ServerStats s = relay_->stats();
    std::printf("served %llu clients (%llu failed, %llu redirected), %s sent\n",
                static_cast<unsigned long long>(s.clients_served),
                static_cast<unsigned long long>(s.clients_failed),
                static_cast<unsigned long long>(s.redirected),
                cli::HumanBytes(s.bytes_sent).c_str());
  }

  // --output without --delta-from: the load goes straight into the output files.
  bool Streaming() const { return !flags_.output_dir.empty() && flags_.delta_dir.empty(); }
  const ModelView& Destination() const { return Streaming() ? output_->view() : model_->view(); }

  // This process's peak resident memory so far (VmHWM), in bytes.
  static uint64_t PeakRssBytes() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
  }

  static int Fail(const std::string& message, int code) {
    std::fprintf(stderr, "netloader-client: %s\n", message.c_str());
    return code;
  }

  cli::ClientFlags& flags_;
  ClientOptions& options_;
  const Clock::time_point run_start_ = Clock::now();
  sigset_t stop_signals_{};
  std::future<Status> transport_started_;
  Result<CheckpointLayout> layout_ = Status(StatusCode::kInternal, "not read yet");
  Result<HostModel> model_ = Status(StatusCode::kInternal, "not allocated yet");
  Result<MappedCheckpoint> output_ = Status(StatusCode::kInternal, "not created yet");
  std::unique_ptr<Server> relay_;
  Result<LoadStats> stats_ = Status(StatusCode::kInternal, "not loaded yet");
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{kAbout};
  app.footer(cli::kExitCodeHelp);
  cli::ClientFlags flags;
  flags.Add(app);
  CLI11_PARSE(app, argc, argv);
  const bool status = flags.status();
  if (!status && ((flags.options.sources.empty() && flags.common.registry.empty()) ||
                  flags.model_path.empty())) {
    std::fprintf(stderr,
                 "netloader-client: give --model and --source or --registry (or --status)\n%s",
                 app.help().c_str());
    return cli::kExitUsage;
  }
  if (!status && flags.output_dir.empty() && !flags.verify_only) {
    std::fprintf(stderr, "netloader-client: give --output DIR or --verify-only\n%s",
                 app.help().c_str());
    return cli::kExitUsage;
  }
  flags.common.ApplyLogLevel();
  Status applied = flags.Apply();
  if (applied.ok() && !status) applied = flags.common.StartMetrics("netloader-client");
  if (!applied.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", applied.ToString().c_str());
    return cli::kExitUsage;
  }
  if (status) {
    return cli::PrintStatus(flags.status_endpoint, flags.options.secret,
                            flags.options.register_timeout, flags.common.json);
  }
  if (flags.relaying() && !flags.options.tensors.empty()) {
    std::fprintf(stderr,
                 "netloader-client: --serve serves the whole model; it cannot go with "
                 "--tensors\n");
    return cli::kExitUsage;
  }
  return ClientRun(flags).Run();
}
