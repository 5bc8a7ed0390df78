// netloader-llama: an example inference engine (a Llama-architecture transformer on CPU) with a
// vLLM-style --load-format=netloader flag. docs/usage.md, "The example engines", lists the keys
// of --model-loader-extra-config and shows tensor/pipeline-parallel runs under mpirun.
//
// Each rank: read config.json and the checkpoint's headers; allocate its shard's buffers; fill
// them from the same rank of a running instance (netloader) or, failing that for any reason, from
// disk; serve them to later instances; decode the prompt greedily. One JSON line per rank on
// stdout says where the weights came from and what was generated.

#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "examples/engine/llama.h"
#include "netloader/client.h"
#include "netloader/loader_config.h"
#include "netloader/metrics.h"
#include "netloader/secret.h"
#include "netloader/server.h"
#include "server/cli/cli_common.h"

namespace {

int64_t EpochMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One line, written at once.
void PrintLine(const nlohmann::json& j) {
  const std::string line = j.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

// Every rank's line, printed by rank 0 in rank order (a collective). Lines that ranks print
// themselves at the same moment may interleave mid-line in mpirun's output forwarding: seen
// with 2 KB lines, both ranks' reports unreadable.
void PrintEveryRank(llama::Comm& comm, const nlohmann::json& j) {
  for (const std::string& line : comm.GatherToFirst(j.dump())) {
    PrintLine(nlohmann::json::parse(line));
  }
}

bool StopRequested(const sigset_t& stop) {
  timespec zero{0, 0};
  return sigtimedwait(&stop, nullptr, &zero) > 0;
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// DELTA_FROM: this rank's weights read from an older copy of the checkpoint in `dir` into
// `weights`, which a delta load then refreshes. Errors: the copy is unreadable or its layout
// (this rank's tensors, dtypes, shapes) differs; `weights` is then untouched.
netloader::Status FillFromOlderCopy(const std::string& dir, const llama::ModelConfig& config,
                                    const llama::Parallel& parallel, llama::Weights& weights) {
  netloader::Result<netloader::CheckpointLayout> layout = netloader::ReadCheckpointLayout(dir);
  if (!layout.ok()) return layout.status();
  netloader::Result<std::vector<llama::ShardSpec>> plan =
      llama::PlanShards(*layout, config, parallel);
  if (!plan.ok()) return plan.status();
  llama::Weights older(std::move(*plan));
  netloader::Status read = older.LoadFromDisk();
  if (!read.ok()) return read;
  const netloader::ModelView from = older.view(), to = weights.view();
  for (size_t i = 0; i < std::max(from.tensors.size(), to.tensors.size()); ++i) {
    if (i >= from.tensors.size() || i >= to.tensors.size() ||
        from.tensors[i].name != to.tensors[i].name ||
        from.tensors[i].dtype != to.tensors[i].dtype ||
        from.tensors[i].shape != to.tensors[i].shape) {
      return netloader::Status(netloader::StatusCode::kInvalidArgument,
                               dir + " has another layout (tensor " + std::to_string(i) + ")");
    }
  }
  for (size_t i = 0; i < to.tensors.size(); ++i) {
    std::memcpy(to.tensors[i].data, from.tensors[i].data, to.tensors[i].size_bytes);
  }
  return netloader::Status::Ok();
}

// The command line.
struct Flags {
  std::string model_dir, prompt = "Hello, netloader", load_format = "auto", extra_config;
  int max_tokens = 16;
  llama::Parallel parallel;
  bool keep_running = false, decode_loop = false;
  std::string log_level = "info";
  netloader::cli::TestHooks testing;

  void Add(CLI::App& app) {
    app.add_option("--model", model_dir, "Checkpoint directory: config.json and *.safetensors")
        ->required();
    app.add_option("--prompt", prompt, "Text to continue (byte tokens)")->capture_default_str();
    app.add_option("--max-tokens", max_tokens, "Tokens to generate")
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
    app.add_option("--load-format", load_format,
                   "safetensors: read the checkpoint from disk. netloader: load each rank from the "
                   "SOURCE of --model-loader-extra-config, falling back to disk, then serve the "
                   "weights. auto: netloader if --model-loader-extra-config is given, else "
                   "safetensors")
        ->check(CLI::IsMember({"auto", "safetensors", "netloader"}))
        ->capture_default_str();
    app.add_option(
        "--model-loader-extra-config", extra_config,
        "JSON object for --load-format=netloader. Keys:\n" + netloader::LoaderConfigHelp());
    app.add_option("--tensor-parallel-size", parallel.tp_size, "Tensor-parallel ranks")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    app.add_option("--pipeline-parallel-size", parallel.pp_size, "Pipeline stages")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    app.add_flag("--keep-running", keep_running,
                 "After decoding, keep serving until SIGINT/SIGTERM");
    app.add_flag("--decode-loop", decode_loop,
                 "With --keep-running: keep decoding the prompt again and again meanwhile, one "
                 "JSON line per token from rank 0 ({\"decoded_tokens\": N, \"ms\": epoch ms, "
                 "\"serving\": transfers in progress})");
    netloader::cli::AddLogLevelOption(app, &log_level);
    testing.AddLoadHooks(app);
    testing.AddCorruptHook(app);
  }
};

// One rank of an instance, from start-up to shutdown: each step returns 0 to go on, or the exit
// code to end with (under mpirun a failing rank aborts the instance).
class Instance {
 public:
  explicit Instance(Flags& flags) : flags_(flags), parallel_(flags.parallel) {}

  int Run(int argc, char** argv) {
    if (int code = Configure(); code != 0) return code;
    if (int code = StartMpi(argc, argv); code != 0) return code;
    if (int code = Prepare(); code != 0) return code;
    if (int code = Load(); code != 0) return code;
    if (int code = Serve(); code != 0) return code;
    if (int code = DecodeAndStay(); code != 0) return code;
    Shutdown();
    return 0;
  }

 private:
  bool netloader() const { return flags_.load_format == "netloader"; }

  // --model-loader-extra-config and the shared secret both sides of every transfer hold (AUTH,
  // SECRET_FILE; none with AUTH false).
  int Configure() {
    if (!netloader()) return 0;
    netloader::Result<netloader::LoaderConfig> parsed = netloader::ParseLoaderConfig(
        flags_.extra_config.empty() ? "{}" : flags_.extra_config, parallel_.world());
    if (!parsed.ok()) return Usage(parsed.status().message());
    loader_ = *parsed;
    if (under_mpirun_ && loader_.server.transport.rendezvous_uri.empty()) {
      return Usage(
          "under mpirun, --model-loader-extra-config needs RENDEZVOUS (the file:PATH given to "
          "mpirun --ompi-server)");
    }
    if (!loader_.auth) return 0;
    netloader::Result<std::string> read = netloader::LoadOrCreateSecret(
        loader_.secret_file.empty() ? netloader::DefaultSecretPath() : loader_.secret_file);
    if (!read.ok()) return Usage(read.status().ToString());
    secret_ = *read;
    return 0;
  }

  // A single process leaves MPI to netloader; the ranks of an instance start it themselves.
  int StartMpi(int argc, char** argv) {
    const netloader::TransportOptions& transport = loader_.server.transport;
    if (!under_mpirun_ && parallel_.world() != 1) {
      return Usage(std::to_string(parallel_.world()) + " ranks need mpirun -np " +
                   std::to_string(parallel_.world()));
    }
    if (!under_mpirun_) {
      comm_ = llama::MakeLocalComm();
      // MPI start-up (~100-200 ms) overlaps the weight allocation when the rendezvous is shared
      // (docs/tuning.md, "MPI start-up"); Load waits for what is left of it.
      if (netloader() && !transport.rendezvous_uri.empty()) {
        transport_started_ =
            std::async(std::launch::async, netloader::InitializeTransport, transport);
      }
      return 0;
    }
    netloader::PrepareMpiEnvironment(transport);
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int world = 0, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (world != parallel_.world() || provided < MPI_THREAD_MULTIPLE) {
      if (rank == 0) {
        std::fprintf(stderr,
                     "netloader-llama: mpirun started %d ranks, but tensor x pipeline parallel "
                     "size is %d%s\n",
                     world, parallel_.world(),
                     provided < MPI_THREAD_MULTIPLE ? " (and MPI lacks THREAD_MULTIPLE)" : "");
      }
      MPI_Finalize();
      return 2;
    }
    parallel_.tp_rank = rank % parallel_.tp_size;
    parallel_.pp_rank = rank / parallel_.tp_size;
    comm_ = llama::MakeMpiComm(parallel_);
    return 0;
  }

  // config.json, the checkpoint's headers and this rank's buffers.
  int Prepare() {
    rank_ = parallel_.rank();
    who_ = "netloader-llama rank " + std::to_string(rank_);
    netloader::Result<llama::ModelConfig> config =
        llama::ReadModelConfig(flags_.model_dir + "/config.json");
    if (!config.ok()) return Fail(config.status().message(), 3);
    config_ = *config;
    netloader::Result<netloader::CheckpointLayout> layout =
        netloader::ReadCheckpointLayout(flags_.model_dir);
    if (!layout.ok()) return Fail(layout.status().message(), 3);
    netloader::Result<std::vector<llama::ShardSpec>> plan =
        llama::PlanShards(*layout, config_, parallel_);
    if (!plan.ok()) return Fail(plan.status().message(), 3);
    weights_.emplace(std::move(*plan));
    report_ = {{"rank", rank_},
               {"tp_rank", parallel_.tp_rank},
               {"pp_rank", parallel_.pp_rank},
               {"bytes", weights_->total_bytes()}};
    const netloader::Partition partition{parallel_.tp_size, parallel_.tp_rank, parallel_.pp_size,
                                         parallel_.pp_rank, llama::kLayoutKey};
    rank_options_ = netloader::OptionsForRank(loader_, rank_, partition, secret_);
    if (!rank_options_.metrics_listen.empty()) {
      netloader::Result<std::string> metrics =
          netloader::ServeMetrics(rank_options_.metrics_listen);
      if (!metrics.ok()) return Fail("METRICS_PORT: " + metrics.status().ToString(), 2);
      std::fprintf(stderr, "%s: metrics at http://%s/metrics\n", who_.c_str(), metrics->c_str());
    }
    // TENSORS: the tensors of this rank a partial load fills; the others come from disk.
    for (const netloader::TensorView& t : weights_->view().tensors) {
      for (const std::string& pattern : loader_.tensors) {
        if (netloader::TensorPatternMatches(pattern, t.name)) partial_.insert(t.name);
      }
    }
    have_turn_ = rank_ == 0 || !under_mpirun_;
    passed_turn_ = !under_mpirun_;
    return 0;
  }

  // From the sources of this rank, else from disk. Never compute on anything else.
  int Load() {
    const int64_t started = EpochMs();
    std::string loaded_from = "disk";
    if (netloader()) {
      std::string fallback_reason;
      if (int code = LoadFromPeers(&loaded_from, &fallback_reason); code != 0) return code;
      if (loaded_from == "disk") {
        std::fprintf(stderr, "%s: WARN netloader did not load this rank (%s); loading from disk\n",
                     who_.c_str(), fallback_reason.c_str());
      }
      if (!fallback_reason.empty()) report_["fallback_reason"] = fallback_reason;
    }
    PassTurn();  // also when this rank never connected: the next one must not wait for its disk
    from_disk_ = loaded_from == "disk";
    if (from_disk_ || !partial_.empty()) {
      // Everything, or what a partial load left out.
      const size_t tensors = weights_->view().tensors.size();
      netloader::Status status =
          weights_->LoadFromDisk(from_disk_ ? std::set<std::string>{} : partial_);
      if (!status.ok()) return Fail(status.message(), 3);
      report_["tensors_from_disk"] = from_disk_ ? tensors : tensors - partial_.size();
    }
    report_["load_started_ms"] = started;
    report_["load_finished_ms"] = EpochMs();
    report_["loaded_from"] = loaded_from;
    std::fprintf(stderr, "%s: loaded %.1f MiB from %s in %.3f s\n", who_.c_str(),
                 weights_->total_bytes() / 1048576.0, loaded_from.c_str(),
                 (EpochMs() - started) / 1000.0);
    return 0;
  }

  // The netloader part of Load: `*loaded_from` becomes the source, or `*fallback_reason` says why
  // not. A relay (serving while it loads) starts here.
  int LoadFromPeers(std::string* loaded_from, std::string* fallback_reason) {
    netloader::ClientOptions& options = rank_options_.client;
    if (options.sources.empty() && options.registry.empty()) {
      *fallback_reason = "no SOURCE for rank " + std::to_string(rank_);
      netloader::CountFallback("no_source");
      return 0;
    }
    if (!loader_.tensors.empty() && partial_.empty()) {
      *fallback_reason = "TENSORS matches none of rank " + std::to_string(rank_) + "'s tensors";
      netloader::CountFallback("no_tensors");
      return 0;
    }
    // Named exactly: the source may hold more tensors matching TENSORS than this rank (another
    // pipeline split, a whole model); this rank needs these.
    for (const std::string& name : partial_) {
      options.tensors.push_back(netloader::ExactTensorPattern(name));
    }
    options.connect_hook = [this](netloader::ConnectEvent event) {
      event == netloader::ConnectEvent::kBefore ? TakeTurn() : PassTurn();
    };
    if (!loader_.delta_from.empty()) {
      const netloader::Status older =
          FillFromOlderCopy(loader_.delta_from, config_, parallel_, *weights_);
      options.destination_filled = older.ok();
      if (!older.ok()) {
        std::fprintf(stderr, "%s: WARN DELTA_FROM not used (%s); loading every chunk\n",
                     who_.c_str(), older.ToString().c_str());
      }
    }
    options.progress = [this](uint64_t done, uint64_t total) {
      flags_.testing.HoldIfDue(who_.c_str(), done, total);
    };
    if (rank_options_.relay) {
      netloader::Result<std::unique_ptr<netloader::Server>> relay =
          netloader::Server::StartRelay(rank_options_.server, weights_->view());
      if (!relay.ok()) return Fail("serving failed: " + relay.status().ToString(), 5);
      server_ = std::move(*relay);
      options.relay = server_.get();
      report_["relayed"] = true;
      std::fprintf(stderr, "%s: relaying at %s while it loads\n", who_.c_str(),
                   server_->endpoint().c_str());
    }
    flags_.testing.WaitForStart(who_.c_str());
    netloader::Result<netloader::LoadStats> stats = netloader::Load(options, weights_->view());
    if (!stats.ok()) {
      *fallback_reason = stats.status().ToString();
      netloader::CountFallback(netloader::StatusCodeName(stats.status().code()));
      return 0;
    }
    *loaded_from = stats->source;
    uint64_t pulled = 0;
    for (const netloader::SourceAttempt& a : stats->attempts) pulled += a.bytes;
    report_["gbps"] = stats->gbps;
    report_["bytes_pulled"] = pulled;
    report_["bytes_reused"] = stats->bytes_reused;
    report_["tensors_loaded"] = stats->tensors;
    return 0;
  }

  // The ranks connect to their sources one after another (rank r once rank r - 1 has), because
  // Open MPI can wedge two connects between the same two mpirun jobs made at the same moment
  // (DESIGN.md); their transfers still overlap. Every rank passes the turn on exactly once.
  void TakeTurn() {
    if (have_turn_) return;
    comm_->WaitForTurn();
    have_turn_ = true;
  }
  void PassTurn() {
    TakeTurn();
    if (!passed_turn_) comm_->PassTurn();
    passed_turn_ = true;
  }

  // Every loaded instance is a source for the next one, also one loaded from disk. A whole-rank
  // netloader load serves while it loads (a relay, started before it: the server it loads from
  // may redirect newcomers here); otherwise the server starts once the rank is loaded.
  int Serve() {
    if (!server_ && netloader() && loader_.serve) {
      netloader::Result<std::unique_ptr<netloader::Server>> started =
          netloader::Server::Start(rank_options_.server, weights_->view());
      if (!started.ok()) return Fail("serving failed: " + started.status().ToString(), 5);
      server_ = std::move(*started);
    } else if (server_ && from_disk_) {
      netloader::Status marked = server_->MarkLoaded();  // the relay's own load failed
      if (!marked.ok()) return Fail("serving failed: " + marked.ToString(), 5);
    }
    if (!server_) return 0;
    report_["endpoint"] = server_->endpoint();
    std::fprintf(stderr, "%s: serving its weights at %s\n", who_.c_str(),
                 server_->endpoint().c_str());
    if (!loader_.output_prefix.empty()) {
      const std::string path = loader_.output_prefix + std::to_string(rank_) + ".txt";
      std::ofstream(path + ".tmp") << server_->endpoint() << "\n";
      if (std::rename((path + ".tmp").c_str(), path.c_str()) != 0) {
        return Fail("cannot write OUTPUT_PREFIX file " + path, 7);
      }
    }
    if (flags_.testing.corrupt_served_weights) weights_->CorruptOneBit();
    return 0;
  }

  // Decode; then, with --keep-running, stay up as a source (optionally decoding meanwhile) until
  // rank 0 is told to stop.
  int DecodeAndStay() {
    llama::Engine engine(config_, parallel_, *weights_, *comm_);
    const std::vector<int> prompt_tokens = llama::Tokenize(flags_.prompt);
    if (prompt_tokens.empty()) return Fail("--prompt is empty", 2);
    llama::Generation generation = engine.Generate(prompt_tokens, flags_.max_tokens);
    report_["tokens"] = generation.tokens;
    report_["text"] = llama::Detokenize(generation.tokens);
    report_["logits_digest"] = Hex(generation.logits_digest);
    PrintEveryRank(*comm_, report_);
    int64_t decoded = 0;
    for (bool running = flags_.keep_running; running;) {
      if (flags_.decode_loop) {
        llama::Generation again = engine.Generate(prompt_tokens, flags_.max_tokens, [&](int) {
          if (rank_ != 0) return;
          // How many transfers this instance's server has in progress as the token is done.
          const int serving = server_ ? server_->stats().active_transfers : 0;
          PrintLine({{"rank", 0},
                     {"decoded_tokens", ++decoded},
                     {"ms", EpochMs()},
                     {"serving", serving}});
        });
        if (again.tokens != generation.tokens) return Fail("decoding is not deterministic", 1);
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      running = comm_->BroadcastFromFirst(rank_ == 0 && StopRequested(stop_) ? 1 : 0) == 0;
    }
    return 0;
  }

  void Shutdown() {
    if (server_) {
      server_->Stop();
      const netloader::ServerStats stats = server_->stats();
      if (flags_.keep_running) {  // every rank serves, or none
        PrintEveryRank(*comm_, {{"rank", rank_},
                                {"served", stats.clients_served},
                                {"failed", stats.clients_failed},
                                {"refused", stats.refused}});
      }
    }
    comm_.reset();
    if (under_mpirun_) MPI_Finalize();
  }

  // A mistake in how the engine was started, said before any rank has its weights.
  static int Usage(const std::string& message) {
    std::fprintf(stderr, "netloader-llama: %s\n", message.c_str());
    return 2;
  }
  int Fail(const std::string& message, int code) const {
    std::fprintf(stderr, "%s: %s\n", who_.c_str(), message.c_str());
    if (under_mpirun_) MPI_Abort(MPI_COMM_WORLD, code);
    return code;
  }

  Flags& flags_;
  llama::Parallel& parallel_;
  const bool under_mpirun_ = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
  netloader::LoaderConfig loader_;
  std::string secret_;
  std::unique_ptr<llama::Comm> comm_;
  std::future<netloader::Status> transport_started_;
  int rank_ = 0;
  std::string who_ = "netloader-llama";
  llama::ModelConfig config_;
  std::optional<llama::Weights> weights_;
  netloader::RankOptions rank_options_;
  std::set<std::string> partial_;
  bool have_turn_ = true, passed_turn_ = true;
  nlohmann::json report_;
  std::unique_ptr<netloader::Server> server_;
  bool from_disk_ = true;
  // Taken by rank 0's decode loop only; blocked before any thread starts, so that no thread of
  // this process is interrupted.
  const sigset_t stop_ = netloader::cli::BlockStopSignals();
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-llama: an example inference engine. Loads a Llama-architecture safetensors\n"
      "checkpoint (float32, with config.json) from disk or from a running instance through\n"
      "netloader, decodes a prompt greedily on CPU and prints one JSON line per rank.\n"
      "Tensor/pipeline parallel: run N = tp x pp ranks under mpirun (see docs/usage.md)."};
  Flags flags;
  flags.Add(app);
  CLI11_PARSE(app, argc, argv);
  netloader::cli::ApplyLogLevel(flags.log_level);
  if (flags.load_format == "auto") {
    flags.load_format = flags.extra_config.empty() ? "safetensors" : "netloader";
  }
  return Instance(flags).Run(argc, argv);
}
