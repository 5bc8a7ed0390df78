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
#include <set>
#include <thread>

#include "examples/engine/llama.h"
#include "netloader/client.h"
#include "netloader/loader_config.h"
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "netloader-llama: an example inference engine. Loads a Llama-architecture safetensors\n"
      "checkpoint (float32, with config.json) from disk or from a running instance through\n"
      "netloader, decodes a prompt greedily on CPU and prints one JSON line per rank.\n"
      "Tensor/pipeline parallel: run N = tp x pp ranks under mpirun (see docs/usage.md)."};
  std::string model_dir, prompt = "Hello, netloader", load_format = "auto", extra_config;
  int max_tokens = 16;
  llama::Parallel parallel;
  bool keep_running = false, decode_loop = false;
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
  app.add_flag("--keep-running", keep_running, "After decoding, keep serving until SIGINT/SIGTERM");
  app.add_flag("--decode-loop", decode_loop,
               "With --keep-running: keep decoding the prompt again and again meanwhile, one "
               "JSON line per token from rank 0 ({\"decoded_tokens\": N, \"ms\": epoch ms, "
               "\"serving\": transfers in progress})");
  std::string log_level = "info";
  netloader::cli::AddLogLevelOption(app, &log_level);
  netloader::cli::TestHooks testing;
  testing.AddLoadHooks(app);
  testing.AddCorruptHook(app);
  CLI11_PARSE(app, argc, argv);
  netloader::cli::ApplyLogLevel(log_level);
  if (load_format == "auto") load_format = extra_config.empty() ? "safetensors" : "netloader";

  // Signals are taken by rank 0's decode loop only; no thread of this process is interrupted.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  const bool under_mpirun = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
  netloader::LoaderConfig loader;
  if (load_format == "netloader") {
    netloader::Result<netloader::LoaderConfig> parsed =
        netloader::ParseLoaderConfig(extra_config.empty() ? "{}" : extra_config, parallel.world());
    if (!parsed.ok()) {
      std::fprintf(stderr, "netloader-llama: %s\n", parsed.status().message().c_str());
      return 2;
    }
    loader = *parsed;
    if (under_mpirun && loader.server.transport.rendezvous_uri.empty()) {
      std::fprintf(stderr,
                   "netloader-llama: under mpirun, --model-loader-extra-config needs RENDEZVOUS "
                   "(the file:PATH given to mpirun --ompi-server)\n");
      return 2;
    }
  }
  // The shared secret both sides of every transfer hold (AUTH, SECRET_FILE); none with AUTH false.
  std::string secret;
  if (load_format == "netloader" && loader.auth) {
    netloader::Result<std::string> read = netloader::LoadOrCreateSecret(
        loader.secret_file.empty() ? netloader::DefaultSecretPath() : loader.secret_file);
    if (!read.ok()) {
      std::fprintf(stderr, "netloader-llama: %s\n", read.status().ToString().c_str());
      return 2;
    }
    secret = *read;
  }
  const netloader::TransportOptions& transport = loader.server.transport;

  // A single process leaves MPI to netloader; the ranks of an instance start it themselves.
  std::unique_ptr<llama::Comm> comm;
  if (under_mpirun) {
    netloader::PrepareMpiEnvironment(transport);
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int world = 0, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (world != parallel.world() || provided < MPI_THREAD_MULTIPLE) {
      if (rank == 0) {
        std::fprintf(stderr,
                     "netloader-llama: mpirun started %d ranks, but tensor x pipeline parallel "
                     "size is %d%s\n",
                     world, parallel.world(),
                     provided < MPI_THREAD_MULTIPLE ? " (and MPI lacks THREAD_MULTIPLE)" : "");
      }
      MPI_Finalize();
      return 2;
    }
    parallel.tp_rank = rank % parallel.tp_size;
    parallel.pp_rank = rank / parallel.tp_size;
    comm = llama::MakeMpiComm(parallel);
  } else if (parallel.world() != 1) {
    std::fprintf(stderr, "netloader-llama: %d ranks need mpirun -np %d\n", parallel.world(),
                 parallel.world());
    return 2;
  } else {
    comm = llama::MakeLocalComm();
  }
  // MPI start-up (~100-200 ms) overlaps the weight allocation below when the rendezvous is shared
  // (docs/tuning.md, "MPI start-up"); Load waits for what is left of it. Ranks under mpirun started
  // it.
  std::future<netloader::Status> transport_started;
  if (!under_mpirun && load_format == "netloader" && !transport.rendezvous_uri.empty()) {
    transport_started = std::async(std::launch::async, netloader::InitializeTransport, transport);
  }
  const int rank = parallel.rank();
  const std::string who = "netloader-llama rank " + std::to_string(rank);
  auto fail = [&](const std::string& message, int code) {
    std::fprintf(stderr, "%s: %s\n", who.c_str(), message.c_str());
    if (under_mpirun) MPI_Abort(MPI_COMM_WORLD, code);
    return code;
  };

  netloader::Result<llama::ModelConfig> config = llama::ReadModelConfig(model_dir + "/config.json");
  if (!config.ok()) return fail(config.status().message(), 3);
  netloader::Result<netloader::CheckpointLayout> layout =
      netloader::ReadCheckpointLayout(model_dir);
  if (!layout.ok()) return fail(layout.status().message(), 3);
  netloader::Result<std::vector<llama::ShardSpec>> plan =
      llama::PlanShards(*layout, *config, parallel);
  if (!plan.ok()) return fail(plan.status().message(), 3);
  llama::Weights weights(std::move(*plan));
  netloader::Partition partition{parallel.tp_size, parallel.tp_rank, parallel.pp_size,
                                 parallel.pp_rank, llama::kLayoutKey};

  // Load: from the sources of this rank, else from disk. Never compute on anything else.
  nlohmann::json report = {{"rank", rank},
                           {"tp_rank", parallel.tp_rank},
                           {"pp_rank", parallel.pp_rank},
                           {"bytes", weights.total_bytes()}};
  const int64_t load_started = EpochMs();
  std::string loaded_from = "disk", fallback_reason;
  // TENSORS: the tensors of this rank a partial load fills; the others come from disk.
  std::set<std::string> partial;
  for (const netloader::TensorView& t : weights.view().tensors) {
    for (const std::string& pattern : loader.tensors) {
      if (netloader::TensorPatternMatches(pattern, t.name)) partial.insert(t.name);
    }
  }
  // The ranks connect to their sources one after another (rank r once rank r - 1 has), because
  // Open MPI can wedge two connects between the same two mpirun jobs made at the same moment
  // (DESIGN.md); their transfers still overlap. Every rank passes the turn on exactly once.
  bool have_turn = rank == 0 || !under_mpirun, passed_turn = !under_mpirun;
  auto take_turn = [&] {
    if (have_turn) return;
    comm->WaitForTurn();
    have_turn = true;
  };
  auto pass_turn = [&] {
    take_turn();
    if (!passed_turn) comm->PassTurn();
    passed_turn = true;
  };
  netloader::RankOptions rank_options = netloader::OptionsForRank(loader, rank, partition, secret);
  const netloader::ServerOptions& server_options = rank_options.server;
  std::unique_ptr<netloader::Server> server;
  if (load_format == "netloader") {
    if (rank_options.client.sources.empty()) {
      fallback_reason = "no SOURCE for rank " + std::to_string(rank);
    } else if (!loader.tensors.empty() && partial.empty()) {
      fallback_reason = "TENSORS matches none of rank " + std::to_string(rank) + "'s tensors";
    } else {
      netloader::ClientOptions& options = rank_options.client;
      // Named exactly: the source may hold more tensors matching TENSORS than this rank (another
      // pipeline split, a whole model); this rank needs these.
      for (const std::string& name : partial) {
        options.tensors.push_back(netloader::ExactTensorPattern(name));
      }
      options.connect_hook = [&](netloader::ConnectEvent event) {
        event == netloader::ConnectEvent::kBefore ? take_turn() : pass_turn();
      };
      if (!loader.delta_from.empty()) {
        const netloader::Status older =
            FillFromOlderCopy(loader.delta_from, *config, parallel, weights);
        options.destination_filled = older.ok();
        if (!older.ok()) {
          std::fprintf(stderr, "%s: WARN DELTA_FROM not used (%s); loading every chunk\n",
                       who.c_str(), older.ToString().c_str());
        }
      }
      options.progress = [&](uint64_t done, uint64_t total) {
        testing.HoldIfDue(who.c_str(), done, total);
      };
      if (rank_options.relay) {
        netloader::Result<std::unique_ptr<netloader::Server>> relay =
            netloader::Server::StartRelay(server_options, weights.view());
        if (!relay.ok()) return fail("serving failed: " + relay.status().ToString(), 5);
        server = std::move(*relay);
        options.relay = server.get();
        report["relayed"] = true;
        std::fprintf(stderr, "%s: relaying at %s while it loads\n", who.c_str(),
                     server->endpoint().c_str());
      }
      netloader::Result<netloader::LoadStats> stats = netloader::Load(options, weights.view());
      if (stats.ok()) {
        loaded_from = stats->source;
        report["gbps"] = stats->gbps;
        uint64_t pulled = 0;
        for (const netloader::SourceAttempt& a : stats->attempts) pulled += a.bytes;
        report["bytes_pulled"] = pulled;
        report["bytes_reused"] = stats->bytes_reused;
        report["tensors_loaded"] = stats->tensors;
      } else {
        fallback_reason = stats.status().ToString();
      }
    }
    if (loaded_from == "disk") {
      std::fprintf(stderr, "%s: WARN netloader did not load this rank (%s); loading from disk\n",
                   who.c_str(), fallback_reason.c_str());
    }
  }
  pass_turn();  // also when this rank never connected: the next one must not wait for its disk
  if (loaded_from == "disk" || !partial.empty()) {
    // Everything, or what a partial load left out.
    const size_t from_disk = loaded_from == "disk" ? weights.view().tensors.size()
                                                   : weights.view().tensors.size() - partial.size();
    netloader::Status status =
        weights.LoadFromDisk(loaded_from == "disk" ? std::set<std::string>{} : partial);
    if (!status.ok()) return fail(status.message(), 3);
    report["tensors_from_disk"] = from_disk;
  }
  report["load_started_ms"] = load_started;
  report["load_finished_ms"] = EpochMs();
  report["loaded_from"] = loaded_from;
  if (!fallback_reason.empty()) report["fallback_reason"] = fallback_reason;
  std::fprintf(stderr, "%s: loaded %.1f MiB from %s in %.3f s\n", who.c_str(),
               weights.total_bytes() / 1048576.0, loaded_from.c_str(),
               (EpochMs() - load_started) / 1000.0);

  // Serve: every loaded instance is a source for the next one, also one loaded from disk. A
  // whole-rank netloader load serves while it loads (a relay, started before it: the server
  // above may redirect newcomers here); otherwise the server starts once the rank is loaded.
  if (!server && load_format == "netloader" && loader.serve) {
    netloader::Result<std::unique_ptr<netloader::Server>> started =
        netloader::Server::Start(server_options, weights.view());
    if (!started.ok()) return fail("serving failed: " + started.status().ToString(), 5);
    server = std::move(*started);
  } else if (server && loaded_from == "disk") {
    netloader::Status marked = server->MarkLoaded();  // the relay's own load failed
    if (!marked.ok()) return fail("serving failed: " + marked.ToString(), 5);
  }
  if (server) {
    report["endpoint"] = server->endpoint();
    std::fprintf(stderr, "%s: serving its weights at %s\n", who.c_str(),
                 server->endpoint().c_str());
    if (!loader.output_prefix.empty()) {
      const std::string path = loader.output_prefix + std::to_string(rank) + ".txt";
      std::ofstream(path + ".tmp") << server->endpoint() << "\n";
      if (std::rename((path + ".tmp").c_str(), path.c_str()) != 0) {
        return fail("cannot write OUTPUT_PREFIX file " + path, 7);
      }
    }
    if (testing.corrupt_served_weights) weights.CorruptOneBit();
  }

  // Decode.
  llama::Engine engine(*config, parallel, weights, *comm);
  const std::vector<int> prompt_tokens = llama::Tokenize(prompt);
  if (prompt_tokens.empty()) return fail("--prompt is empty", 2);
  llama::Generation generation = engine.Generate(prompt_tokens, max_tokens);
  report["tokens"] = generation.tokens;
  report["text"] = llama::Detokenize(generation.tokens);
  report["logits_digest"] = Hex(generation.logits_digest);
  PrintEveryRank(*comm, report);

  // Stay up as a source (optionally decoding meanwhile) until rank 0 is told to stop.
  int64_t decoded = 0;
  for (bool running = keep_running; running;) {
    if (decode_loop) {
      llama::Generation again = engine.Generate(prompt_tokens, max_tokens, [&](int) {
        if (rank != 0) return;
        // How many transfers this instance's server has in progress as the token is done.
        const int serving = server ? server->stats().active_transfers : 0;
        PrintLine(
            {{"rank", 0}, {"decoded_tokens", ++decoded}, {"ms", EpochMs()}, {"serving", serving}});
      });
      if (again.tokens != generation.tokens) return fail("decoding is not deterministic", 1);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    running = comm->BroadcastFromFirst(rank == 0 && StopRequested(stop) ? 1 : 0) == 0;
  }
  if (server) {
    server->Stop();
    const netloader::ServerStats stats = server->stats();
    if (keep_running) {  // every rank serves, or none
      PrintEveryRank(*comm, {{"rank", rank},
                             {"served", stats.clients_served},
                             {"failed", stats.clients_failed},
                             {"refused", stats.refused}});
    }
  }
  comm.reset();
  if (under_mpirun) MPI_Finalize();
  return 0;
}
