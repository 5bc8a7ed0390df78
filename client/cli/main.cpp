// netloader-client: pulls a model from running netloader sources, verifies every chunk, and
// writes it out as safetensors (or only verifies it).

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

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

// The files this run writes into `dir` that are already there.
std::vector<std::string> ExistingOutputFiles(const std::string& dir,
                                             const CheckpointLayout& layout) {
  std::vector<std::string> existing;
  for (const std::string& name : CheckpointFileNames(layout)) {
    struct stat info {};
    if (lstat((dir + "/" + name).c_str(), &info) == 0) existing.push_back(dir + "/" + name);
  }
  return existing;
}

// Reads back the checkpoint this run wrote into `dir` (its index if it wrote one, else each shard
// file it wrote; nothing else in `dir`) and checks every tensor against the source's per-tensor
// digests. The files are mapped read-only rather than read into memory: no second copy.
Status CheckWrittenCheckpoint(const std::string& dir, const CheckpointLayout& written,
                              const LoadStats& stats) {
  CheckpointLayout layout;
  const std::vector<std::string> names = CheckpointFileNames(written);
  for (size_t i = 0; i < names.size(); ++i) {
    // An index names exactly the shards written with it; without one, read each shard.
    if (written.indexed && i + 1 < names.size()) continue;
    Result<CheckpointLayout> part = ReadCheckpointLayout(dir + "/" + names[i]);
    if (!part.ok()) return part.status();
    for (ShardLayout& shard : part->shards) layout.shards.push_back(std::move(shard));
  }
  std::vector<std::pair<void*, size_t>> mappings;
  ModelView view;
  Status status;
  for (const ShardLayout& shard : layout.shards) {
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

// --delta-from: the older copy (its tensors selected by --tensors, if given), read into memory,
// which must have the layout of --model: the same tensors (names, dtypes, shapes) in the same
// order.
Result<HostModel> ReadOlderCopy(const std::string& dir, const CheckpointLayout& expected,
                                const std::vector<std::string>& patterns) {
  Result<CheckpointLayout> layout = ReadCheckpointLayout(dir);
  if (layout.ok() && !patterns.empty()) layout = SelectFromLayout(*layout, patterns);
  if (!layout.ok()) return layout.status().WithContext("--delta-from");
  auto flatten = [](const CheckpointLayout& l) {
    std::vector<const TensorSpec*> all;
    for (const ShardLayout& shard : l.shards) {
      for (const TensorSpec& t : shard.tensors) all.push_back(&t);
    }
    return all;
  };
  const std::vector<const TensorSpec*> want = flatten(expected), have = flatten(*layout);
  for (size_t i = 0; i < std::max(want.size(), have.size()); ++i) {
    if (i < want.size() && i < have.size() && want[i]->name == have[i]->name &&
        want[i]->dtype == have[i]->dtype && want[i]->shape == have[i]->shape) {
      continue;
    }
    return Status(StatusCode::kInvalidArgument,
                  "--delta-from " + dir + " has another layout than --model: tensor " +
                      std::to_string(i) + " is '" + (i < have.size() ? have[i]->name : "none") +
                      "' there and '" + (i < want.size() ? want[i]->name : "none") +
                      "' in --model (or its dtype or shape differs)");
  }
  Result<HostModel> older = HostModel::Load(*layout);
  if (!older.ok()) return older.status().WithContext("--delta-from " + dir);
  return older;
}

// --status: one StatusRequest, printed.
int PrintStatus(const std::string& endpoint, const std::string& secret,
                std::chrono::milliseconds timeout, bool json) {
  Result<SourceStatus> status = QueryStatus(endpoint, secret, timeout);
  if (!status.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", status.status().ToString().c_str());
    const int code = cli::ExitCodeFor(status.status().code());
    return code == cli::kExitBadModel ? cli::kExitFailure : code;
  }
  const SourceStatus& s = *status;
  if (json) {
    std::cout << nlohmann::json{{"endpoint", endpoint},
                                {"state", s.state},
                                {"failure", s.failure},
                                {"model_id", s.model_id},
                                {"tp_size", s.partition.tp_size},
                                {"tp_rank", s.partition.tp_rank},
                                {"pp_size", s.partition.pp_size},
                                {"pp_rank", s.partition.pp_rank},
                                {"layout_key", s.partition.layout_key},
                                {"table_digest", s.table_digest},
                                {"bytes_total", s.bytes_total},
                                {"bytes_held", s.bytes_held},
                                {"sessions", s.sessions},
                                {"max_sessions", s.max_sessions},
                                {"fanout", s.fanout},
                                {"children", s.children},
                                {"bytes_sent", s.bytes_sent},
                                {"clients_served", s.clients_served},
                                {"clients_failed", s.clients_failed},
                                {"redirected", s.redirected}}
                     .dump()
              << std::endl;
    return cli::kExitOk;
  }
  std::string children;
  for (const std::string& c : s.children) children += (children.empty() ? "" : ", ") + c;
  std::printf(
      "%s: %s%s%s\n  model %s, table %s, tp %d/%d, pp %d/%d%s\n  holds %s of %s (%.1f %%)\n"
      "  %d of %d sessions, fan-out %d; children: %s\n"
      "  served %llu clients (%llu failed), %s sent, %llu redirected\n",
      endpoint.c_str(), s.state.c_str(), s.failure.empty() ? "" : ": ", s.failure.c_str(),
      s.model_id.empty() ? "(no id)" : s.model_id.c_str(), s.table_digest.c_str(),
      s.partition.tp_rank, s.partition.tp_size, s.partition.pp_rank, s.partition.pp_size,
      s.partition.layout_key.empty() ? "" : (", layout " + s.partition.layout_key).c_str(),
      cli::HumanBytes(s.bytes_held).c_str(), cli::HumanBytes(s.bytes_total).c_str(),
      s.bytes_total ? 100.0 * s.bytes_held / s.bytes_total : 100.0, s.sessions, s.max_sessions,
      s.fanout, children.empty() ? "none" : children.c_str(),
      static_cast<unsigned long long>(s.clients_served),
      static_cast<unsigned long long>(s.clients_failed), cli::HumanBytes(s.bytes_sent).c_str(),
      static_cast<unsigned long long>(s.redirected));
  return cli::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-client: pull a model from a running netloader source.\n"
      "Reads only the headers of --model to learn the expected tensor layout, allocates memory\n"
      "for it, and loads the tensors from the first --source that holds the same model and\n"
      "partition, verifying every chunk against the source's XXH3 digests. A source that fails\n"
      "mid-transfer costs only the chunks in flight: the next --source is asked for the rest.\n"
      "Then writes the checkpoint to --output (same shard files and metadata) or, with\n"
      "--verify-only, stops. With --tensors, only the tensors named are loaded and written,\n"
      "from any source that holds them (a whole model, another pipeline split).\n"
      "In the summary, bytes_received counts every chunk received or in flight over all\n"
      "sources, and attempts lists each source tried with the bytes it delivered.\n"
      "The summary gives the transfer's own time and rate (transfer_seconds, transfer_gbps)\n"
      "apart from the whole run's wall time (wall_seconds: reading --model, MPI start-up,\n"
      "registration, the transfer, writing and reading back --output).\n"
      "With --serve, this instance serves the model while it loads and after (a relay): other\n"
      "instances pointed at the same --source are redirected here when that source is at its\n"
      "--fanout limit, and get each chunk as soon as it is verified here. After the load it\n"
      "prints its summary and keeps serving until SIGINT/SIGTERM, then prints what it served."};
  app.footer(cli::kExitCodeHelp);
  std::string model_path;
  std::string output_dir;
  bool verify_only = false;
  ClientOptions options;
  cli::CommonFlags common;
  common.log_level = "warn";  // the summary line says what happened; the library's INFO repeats it
  double register_timeout_s = cli::Seconds(options.register_timeout);
  double connect_timeout_s = cli::Seconds(options.connect_timeout);
  double stall_timeout_s = cli::Seconds(options.stall_timeout);
  double busy_timeout_s = cli::Seconds(options.busy_timeout);
  app.add_option("--source", options.sources,
                 "Source endpoint (tcp://HOST:PORT); repeat for fallbacks, tried in order. A "
                 "source at its fan-out limit may redirect to instances loading from it");
  app.add_option("--model", model_path,
                 "The expected layout: a checkpoint (file, index.json or directory) or a layout "
                 "file (a safetensors header without its data: the first 8 + N bytes of a "
                 ".safetensors file whose 8-byte little-endian prefix is N). Tensor data is "
                 "not read");
  std::string status_endpoint;
  auto* status_flag = app.add_option(
      "--status", status_endpoint,
      "Load nothing: ask the server at ENDPOINT what it is doing (state: serving, loading with "
      "the bytes held, waiting or failed; model and partition; sessions; children, the relays "
      "streaming from it; bytes sent) and print it (--json: one JSON object). Exit 0 when it "
      "answered");
  auto* output = app.add_option(
      "--output", output_dir,
      "Directory to write the loaded checkpoint into (created if missing): the shard files of "
      "--model under their names, and its index if it has one. Other files there are left "
      "alone; a file of one of those names is never replaced unless --overwrite is given");
  bool overwrite = false;
  app.add_flag("--overwrite", overwrite,
               "Replace files of the same names already in --output (without it the client "
               "refuses before loading anything, naming them: exit 7)")
      ->needs(output);
  auto* verify = app.add_flag("--verify-only", verify_only, "Load and verify, but write nothing");
  std::string delta_dir;
  app.add_option("--delta-from", delta_dir,
                 "A delta load: an older copy of the model on local disk (same layout as --model, "
                 "e.g. the last step's weights) is read first, and only the chunks whose digests "
                 "differ from the source's are pulled. bytes_reused in the summary says how much "
                 "was kept; every chunk of the result is verified either way")
      ->check(CLI::ExistingPath);
  app.add_option("--tensors", options.tensors,
                 "A partial load: only the tensors whose names match PATTERN ('*' any run of "
                 "characters, '?' one, '\\' makes the next literal; a name without wildcards "
                 "is itself). Repeat for more. Each must match a tensor of --model. A source "
                 "serves when it holds every one of them with the same dtype and shape, whatever "
                 "else it holds; its pipeline split (--pp-size, --pp-rank) may differ. --output "
                 "then gets only these tensors, in the shard files of --model that hold them")
      ->type_name("PATTERN");
  ServerOptions serving;
  std::string serve_endpoint_file;
  uint64_t serve_chunk_mib = serving.chunk_bytes >> 20;
  auto* serve = app.add_option(
      "--serve", serving.listen,
      "Serve the model while loading it and afterwards, at this ZeroMQ endpoint "
      "(tcp://ADDRESS:PORT, an address the other instances reach; port 0 picks one, see "
      "--serve-endpoint-file). Needs the other instances' --rendezvous, and the whole model "
      "(not --tensors)");
  app.add_option("--serve-endpoint-file", serve_endpoint_file,
                 "With --serve: write the bound endpoint to this file once serving")
      ->needs(serve);
  app.add_option("--serve-max-clients", serving.max_concurrent_transfers,
                 "With --serve: clients streamed at once")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str()
      ->needs(serve);
  app.add_option("--serve-chunk-mib", serve_chunk_mib,
                 "With --serve: MPI message size in MiB once loaded, if the load failed (while "
                 "loading, the source's chunks are forwarded as they are)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str()
      ->needs(serve);
  cli::AddFanoutFlag(app, serving.fanout);
  bool skip_output_check = false;
  app.add_flag("--skip-output-check", skip_output_check,
               "Do not read --output back to check it against the source's per-tensor digests");
  output->excludes(verify);
  app.add_option("--stripe", options.stripe,
                 "Pull from up to this many --source at once, disjoint chunks from each, handed "
                 "out a few at a time (a slower source sends fewer; a failed one's chunks go to "
                 "the others). The sources must hold the same weights and share --rendezvous")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
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
  // For tests: once this percentage of the model is verified, hold the load (inside the
  // progress callback) until FILE exists, so a test can kill the source at a known point.
  double hold_percent = -1;
  std::string hold_file;
  app.add_option("--testing-hold-at", hold_percent)->group("");
  app.add_option("--testing-hold-file", hold_file)->group("");
  // For the benchmark: once ready to load (layout read, memory allocated, MPI and the relay
  // started), say so and wait until FILE exists, so that K instances on one machine's shared
  // cores start loading at the same moment, as K hosts would.
  std::string start_file;
  app.add_option("--testing-start-file", start_file)->group("");
  common.Add(app);
  CLI11_PARSE(app, argc, argv);
  if (!status_flag->empty()) {
    common.ApplyLogLevel();
    Status applied = common.ApplyTo(options);
    if (!applied.ok()) {
      std::fprintf(stderr, "netloader-client: %s\n", applied.ToString().c_str());
      return cli::kExitUsage;
    }
    return PrintStatus(status_endpoint, options.secret, cli::Ms(register_timeout_s), common.json);
  }
  if (options.sources.empty() || model_path.empty()) {
    std::fprintf(stderr, "netloader-client: give --source and --model (or --status)\n%s",
                 app.help().c_str());
    return cli::kExitUsage;
  }
  if (output_dir.empty() && !verify_only) {
    std::fprintf(stderr, "netloader-client: give --output DIR or --verify-only\n%s",
                 app.help().c_str());
    return cli::kExitUsage;
  }
  const auto run_start = Clock::now();
  common.ApplyLogLevel();
  Status applied = common.ApplyTo(options);
  if (!applied.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", applied.ToString().c_str());
    return cli::kExitUsage;
  }
  options.register_timeout = cli::Ms(register_timeout_s);
  options.connect_timeout = cli::Ms(connect_timeout_s);
  options.stall_timeout = cli::Ms(stall_timeout_s);
  options.busy_timeout = cli::Ms(busy_timeout_s);
  const bool relaying = !serve->empty();
  if (relaying && !options.tensors.empty()) {
    std::fprintf(stderr,
                 "netloader-client: --serve serves the whole model; it cannot go with "
                 "--tensors\n");
    return cli::kExitUsage;
  }
  // A relay takes the stop signals only once it serves a loaded model; until then they wait.
  sigset_t stop_signals;
  if (relaying) stop_signals = cli::BlockStopSignals();

  // MPI start-up (~140 ms) need not wait for the source when the rendezvous is shared: it runs
  // while the destination is allocated and faulted in; Load waits for what is left of it.
  std::future<Status> transport_started;
  if (!options.transport.rendezvous_uri.empty()) {
    transport_started = std::async(std::launch::async, InitializeTransport, options.transport);
  }
  Result<CheckpointLayout> layout = ReadCheckpointLayout(model_path, LayoutRead::kHeadersOnly);
  if (!layout.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", layout.status().ToString().c_str());
    return cli::kExitBadModel;
  }
  if (!options.tensors.empty()) {
    layout = SelectFromLayout(*layout, options.tensors);
    if (!layout.ok()) {
      std::fprintf(stderr, "netloader-client: --tensors: %s in --model %s\n",
                   layout.status().message().c_str(), model_path.c_str());
      return cli::kExitUsage;
    }
  }
  if (!output_dir.empty() && !overwrite) {
    const std::vector<std::string> existing = ExistingOutputFiles(output_dir, *layout);
    if (!existing.empty()) {
      std::string names;
      for (const std::string& f : existing) names += (names.empty() ? "" : ", ") + f;
      std::fprintf(stderr,
                   "netloader-client: --output %s already holds %s; nothing was loaded (give "
                   "--overwrite to replace, or another directory)\n",
                   output_dir.c_str(), names.c_str());
      return cli::kExitOutput;
    }
  }
  Result<HostModel> model = delta_dir.empty() ? HostModel::Allocate(*layout)
                                              : ReadOlderCopy(delta_dir, *layout, options.tensors);
  if (!model.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", model.status().ToString().c_str());
    // Memory that could not be had is an internal failure; a bad --delta-from, a bad model.
    return model.status().code() == StatusCode::kUnavailable ? cli::kExitFailure
                                                             : cli::kExitBadModel;
  }
  options.destination_filled = !delta_dir.empty();

  std::unique_ptr<Server> relay;
  if (relaying) {
    Status applied_here = common.ApplyTo(serving);
    serving.chunk_bytes = serve_chunk_mib << 20;
    serving.window = options.window;
    serving.stall_timeout = options.stall_timeout;
    serving.connect_timeout = options.connect_timeout;
    Result<std::unique_ptr<Server>> started =
        applied_here.ok() ? Server::StartRelay(serving, model->view()) : applied_here;
    if (!started.ok()) {
      std::fprintf(stderr, "netloader-client: --serve: %s\n", started.status().ToString().c_str());
      return started.status().code() == StatusCode::kInvalidArgument ? cli::kExitUsage
                                                                     : cli::kExitUnavailable;
    }
    relay = std::move(*started);
    options.relay = relay.get();
    cli::WriteEndpointFile(serve_endpoint_file, relay->endpoint());
    std::fprintf(stderr, "netloader-client: serving while loading at %s\n",
                 relay->endpoint().c_str());
  }

  if (!start_file.empty()) {
    if (transport_started.valid()) (void)transport_started.get();  // Load reports a failure
    std::fprintf(stderr, "netloader-client: ready; waiting for %s\n", start_file.c_str());
    const auto until = Clock::now() + std::chrono::seconds(600);
    while (access(start_file.c_str(), F_OK) != 0 && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  cli::ProgressLine progress;
  const auto start = Clock::now();
  bool held = hold_file.empty();
  options.progress = [&](uint64_t done, uint64_t total) {
    progress.Bar(done, total, SecondsSince(start));
    if (held || 100.0 * done < hold_percent * total) return;
    held = true;
    std::fprintf(stderr,
                 "netloader-client: holding the load at %llu of %llu bytes until %s exists\n",
                 static_cast<unsigned long long>(done), static_cast<unsigned long long>(total),
                 hold_file.c_str());
    const auto until = Clock::now() + std::chrono::seconds(60);
    while (access(hold_file.c_str(), F_OK) != 0 && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
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
               {"bytes_received", stats->bytes_received},
               {"bytes_reused", stats->bytes_reused},
               {"tensors", stats->tensors},
               {"chunks", stats->chunks},
               {"transfer_seconds", stats->transfer_seconds},
               {"transfer_gbps", stats->transfer_gbps},
               {"load_seconds", stats->seconds},
               {"register_seconds", stats->register_seconds},
               {"transport_seconds", stats->transport_seconds},
               {"connect_seconds", stats->connect_seconds},
               {"verified", true}};
    nlohmann::json attempts = nlohmann::json::array();
    for (const SourceAttempt& a : stats->attempts) {
      attempts.push_back(
          {{"source", a.source}, {"status", a.status.ToString()}, {"bytes", a.bytes}});
    }
    summary["attempts"] = attempts;
    if (relay != nullptr) summary["serving"] = relay->endpoint();
    if (!output_dir.empty()) {
      const auto write_start = Clock::now();
      Status written = WriteCheckpoint(output_dir, *layout, model->view());
      summary["output"] = output_dir;
      summary["write_seconds"] = SecondsSince(write_start);
      // Read the written files back and check them against the source's own digests, so what
      // is on disk is known to be what the source holds, not only what arrived in memory.
      if (written.ok() && !skip_output_check) {
        written = CheckWrittenCheckpoint(output_dir, *layout, *stats);
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
  const double wall_seconds = SecondsSince(run_start);
  summary["wall_seconds"] = wall_seconds;
  if (common.json) {
    std::cout << summary.dump() << std::endl;
  } else if (stats.ok()) {
    std::printf(
        "loaded %llu tensors, %llu bytes (%s) from %s: transfer %.3f s at %.2f GB/s, %.3f s wall "
        "in all; %llu chunks verified%s\n",
        static_cast<unsigned long long>(stats->tensors),
        static_cast<unsigned long long>(stats->bytes), cli::HumanBytes(stats->bytes).c_str(),
        stats->source.c_str(), stats->transfer_seconds, stats->transfer_gbps, wall_seconds,
        static_cast<unsigned long long>(stats->chunks),
        exit_code != cli::kExitOk || output_dir.empty() ? ""
        : skip_output_check                             ? ("; wrote " + output_dir).c_str()
                                                        : ("; wrote " + output_dir +
                               ", read it back and checked it against the source's digests")
                                  .c_str());
  }
  if (relay == nullptr || exit_code != cli::kExitOk) return exit_code;
  // Loaded: go on serving it, as any source, until told to stop.
  std::fflush(stdout);
  const std::string stopped_by = cli::ServeUntilStopped(*relay, stop_signals);
  std::fprintf(stderr, "netloader-client: %s received, stopped serving\n", stopped_by.c_str());
  if (common.json) {
    std::cout << nlohmann::json{{"served", cli::ServerSummary(*relay)}}.dump() << std::endl;
  } else {
    const ServerStats s = relay->stats();
    std::printf("served %llu clients (%llu failed, %llu redirected), %s sent\n",
                static_cast<unsigned long long>(s.clients_served),
                static_cast<unsigned long long>(s.clients_failed),
                static_cast<unsigned long long>(s.redirected),
                cli::HumanBytes(s.bytes_sent).c_str());
  }
  return exit_code;
}
