// Server and client in one process over real ZeroMQ sockets on 127.0.0.1, with the in-process
// data plane (and fault-injecting wrappers) standing in for MPI. Real MPI between real processes
// is exercised by cli_test.cpp.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <zmq.hpp>

#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "netloader/logging.h"

#include "client/client_internal.h"
#include "netloader/secret.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/src/stream/chunk_stream.h"
#include "netloader/src/stream/manifest.h"
#include "server/server_internal.h"
#include "tests/support/fault_transport.h"
#include "tests/support/inproc_model.h"
#include "tests/support/inproc_transport.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

using namespace std::chrono_literals;

class ServerClientTest : public InprocTest {};

// The fault matrix (docs/testing.md; outcomes in docs/failure-and-security.md): suites named
// *FaultTest also carry the ctest label `fault`.
class ServerClientFaultTest : public ServerClientTest {};

TEST_F(ServerClientTest, LoadsEveryByteAndReportsStatistics) {
  OwnedModel source(120, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  OwnedModel dest = source.EmptyLike();
  uint64_t last_progress = 0;
  ClientOptions options = ClientFor((*server)->endpoint());
  options.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_GE(done, last_progress);
    EXPECT_EQ(total, source.view.total_bytes());
    last_progress = done;
  };
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
  EXPECT_EQ(stats->bytes, source.view.total_bytes());
  EXPECT_EQ(stats->tensors, 120u);
  EXPECT_EQ(last_progress, source.view.total_bytes());
  EXPECT_GT(stats->chunks, 10u);
  // The server counts the client as served once it reads the verified Done.
  EXPECT_TRUE(testing::WaitFor([&] { return (*server)->stats().clients_served == 1; }, 30s));
  EXPECT_EQ((*server)->stats().bytes_sent, source.view.total_bytes());
}

TEST_F(ServerClientTest, ALoadedModelCanBeReverifiedLaterAgainstTheSourcesDigests) {
  OwnedModel source(40, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats =
      internal::Load(ClientFor((*server)->endpoint()), dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(VerifyModel(dest.view, *stats).ok());
  // Later, one bit of one tensor changes (a stray write, bad memory): named precisely.
  dest.storage[7][dest.storage[7].size() / 2] ^= 0x10;
  Status changed = VerifyModel(dest.view, *stats);
  EXPECT_EQ(changed.code(), StatusCode::kChecksumMismatch);
  EXPECT_NE(changed.message().find("1 tensors differ from the source's digests: layer.7"),
            std::string::npos)
      << changed.message();
  ModelView fewer = dest.view;
  fewer.tensors.pop_back();
  EXPECT_EQ(VerifyModel(fewer, *stats).code(), StatusCode::kInvalidArgument);
}

TEST_F(ServerClientTest, ClientForAModelTheServerDoesNotHoldGetsAClearError) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  OwnedModel other(11, seed_ + 1, false);
  Result<LoadStats> stats =
      internal::Load(ClientFor((*server)->endpoint()), other.view, *Plane(transport_));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(stats.status().message().find("table_digest"), std::string::npos)
      << stats.status().message();
  EXPECT_EQ((*server)->stats().refused, 1u);
}

TEST_F(ServerClientTest, RejectsClientWithDifferentPipelineRankNamingTheField) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.partition.pp_size = 2;
  options.partition.pp_rank = 1;
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(stats.status().message().find("partition.pp_size: server='1' client='2'"),
            std::string::npos)
      << stats.status().message();
  EXPECT_NE(stats.status().message().find("partition.pp_rank: server='0' client='1'"),
            std::string::npos)
      << stats.status().message();
  const std::vector<FieldDiff>& diffs = stats.status().diffs();
  ASSERT_EQ(diffs.size(), 2u) << stats.status().message();
  EXPECT_EQ(diffs[0].field, "partition.pp_size");
  EXPECT_EQ(diffs[0].server_value, "1");
  EXPECT_EQ(diffs[0].client_value, "2");
  EXPECT_EQ(diffs[1].field, "partition.pp_rank");
  EXPECT_EQ(diffs[1].server_value, "0");
  EXPECT_EQ(diffs[1].client_value, "1");
}

// Each fingerprint field wrong on its own, through a real server: refused, that field named.
struct Mismatch {
  const char* field;
  void (*mutate)(ClientOptions&);
};

void PrintTo(const Mismatch& m, std::ostream* os) { *os << m.field; }

class FingerprintFieldFaultTest : public ::testing::TestWithParam<Mismatch> {};

TEST_P(FingerprintFieldFaultTest, ServerRefusesNamingOnlyThatField) {
  OwnedModel source(8, 5, true);
  ServerOptions server_options = SmallChunks();
  server_options.model_id = "org/m@1";
  server_options.partition = {4, 2, 2, 1, "experts:a"};
  auto transport = transfer::MakeInprocTransport();
  auto server = internal::StartServer(server_options, source.view, Plane(transport));
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.model_id = "org/m@1";
  options.partition = server_options.partition;
  ASSERT_TRUE(internal::Load(options, dest.view, *Plane(transport)).ok()) << "control: all match";
  GetParam().mutate(options);
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kFingerprintMismatch);
  const std::string& message = stats.status().message();
  EXPECT_NE(message.find(std::string(GetParam().field) + ": server="), std::string::npos)
      << message;
  EXPECT_EQ(message.find("; "), message.rfind("; ")) << "only one field differs: " << message;
  ASSERT_EQ(stats.status().diffs().size(), 1u) << "the status carries the field too: " << message;
  EXPECT_EQ(stats.status().diffs()[0].field, GetParam().field);
}

INSTANTIATE_TEST_SUITE_P(
    EachField, FingerprintFieldFaultTest,
    ::testing::Values(
        Mismatch{"model_id", [](ClientOptions& o) { o.model_id = "org/m@2"; }},
        Mismatch{"partition.tp_size", [](ClientOptions& o) { o.partition.tp_size = 8; }},
        Mismatch{"partition.tp_rank", [](ClientOptions& o) { o.partition.tp_rank = 3; }},
        Mismatch{"partition.pp_size", [](ClientOptions& o) { o.partition.pp_size = 3; }},
        Mismatch{"partition.pp_rank", [](ClientOptions& o) { o.partition.pp_rank = 0; }},
        Mismatch{"partition.layout_key", [](ClientOptions& o) { o.partition.layout_key = "b"; }}),
    [](const ::testing::TestParamInfo<Mismatch>& param) {
      std::string name = param.param.field;
      for (char& c : name) c = c == '.' ? '_' : c;
      return name;
    });

TEST_F(ServerClientFaultTest, CorruptedChunkIsDetectedNamingTheTensorAndNothingIsLoaded) {
  OwnedModel source(40, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  // Both ways a chunk reaches the client: a slice of one large tensor lands in place, several
  // small tensors coalesced land in the staging ring and are copied out.
  const ChunkPlan plan = ChunkPlan::Make(TensorSizes(source.view), SmallChunks().chunk_bytes);
  std::vector<size_t> corrupted;
  for (bool coalesced : {false, true}) {
    for (size_t c = 0; c < plan.size(); ++c) {
      if ((plan.piece_count(c) > 1) == coalesced) {
        corrupted.push_back(c);
        break;
      }
    }
  }
  ASSERT_EQ(corrupted.size(), 2u) << "the model has no slice or no coalesced chunk";
  for (size_t chunk : corrupted) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    OwnedModel dest = source.EmptyLike();
    auto faulty =
        transfer::MakeFaultyTransport(transport_, {transfer::FaultSpec::Kind::kCorrupt, chunk});
    Result<LoadStats> stats =
        internal::Load(ClientFor((*server)->endpoint()), dest.view, *Plane(faulty));
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().code(), StatusCode::kChecksumMismatch);
    EXPECT_NE(stats.status().message().find("chunk " + std::to_string(chunk) + " ('layer."),
              std::string::npos)
        << stats.status().message();
  }
  // The server hears about each and frees the sessions.
  EXPECT_TRUE(testing::WaitFor([&] { return (*server)->stats().clients_failed == 2; }, 30s))
      << (*server)->stats().clients_failed;
  EXPECT_EQ((*server)->stats().active_transfers, 0);
}

// Collects netloader's log lines for the life of the object.
class LogCapture {
 public:
  LogCapture() {
    SetLogSink([this](LogLevel level, std::string_view message) {
      std::lock_guard<std::mutex> lock(mu_);
      lines_.push_back(std::string(level == LogLevel::kWarn ? "WARN " : "") + std::string(message));
    });
  }
  ~LogCapture() { SetLogSink(nullptr); }
  // Whether a line containing `text` was logged (waiting up to `timeout` for it).
  bool Saw(const std::string& text, std::chrono::milliseconds timeout = 30s) {
    return testing::WaitFor(
        [&] {
          std::lock_guard<std::mutex> lock(mu_);
          for (const std::string& line : lines_) {
            if (line.find(text) != std::string::npos) return true;
          }
          return false;
        },
        timeout);
  }
  std::string All() {
    std::lock_guard<std::mutex> lock(mu_);
    std::string all;
    for (const std::string& line : lines_) all += line + "\n";
    return all;
  }

 private:
  std::mutex mu_;  // guards lines_
  std::vector<std::string> lines_;
};

// Bytes of the first `k` chunks of `model`'s stream at `chunk_bytes`.
uint64_t FirstChunksBytes(const ModelView& model, uint64_t chunk_bytes, size_t k) {
  const transfer::ChunkList chunks = ChunkPlan::Make(TensorSizes(model), chunk_bytes).Spans(model);
  uint64_t bytes = 0;
  for (size_t i = 0; i < k; ++i) bytes += chunks.bytes(i);
  return bytes;
}

// A data plane whose first transport is `first` (say, one that fails) and every later one `then`.
class FailingFirstPlane : public transfer::DataPlane {
 public:
  FailingFirstPlane(std::shared_ptr<transfer::Transport> first,
                    std::shared_ptr<transfer::Transport> then)
      : first_(std::move(first)), then_(std::move(then)) {}
  std::string bound_rendezvous() const override { return ""; }
  Result<std::shared_ptr<transfer::Transport>> Start(const std::string&) override {
    return ++calls_ == 1 ? first_ : then_;
  }

 private:
  std::shared_ptr<transfer::Transport> first_, then_;
  int calls_ = 0;
};

TEST_F(ServerClientFaultTest, FailsOverToTheNextSourceAfterAnUnreachableOneAndABrokenOne) {
  OwnedModel source(30, seed_, true);
  auto broken = internal::StartServer(SmallChunks(), source.view,
                                      Plane(transfer::MakeFaultyTransport(transport_, {})));
  auto good = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(broken.ok() && good.ok());
  OwnedModel dest = source.EmptyLike();
  // A source that never answers: a listening socket nobody accepts on (the kernel completes the
  // TCP handshake, no ZeroMQ greeting follows), so this costs the register timeout. It stays
  // bound for the whole test: a port bound and closed again was once taken by another test's
  // server running in parallel, which answered.
  testing::MuteListener mute;
  ClientOptions options = ClientFor(mute.endpoint());
  options.register_timeout = 300ms;
  options.sources.push_back((*broken)->endpoint());
  options.sources.push_back((*good)->endpoint());
  // The second source's data plane fails at chunk 2 for this client only.
  FailingFirstPlane plane(
      transfer::MakeFaultyTransport(transport_, {transfer::FaultSpec::Kind::kFail, 2}), transport_);
  Result<LoadStats> stats = internal::Load(options, dest.view, plane);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
  ASSERT_EQ(stats->attempts.size(), 3u);
  EXPECT_EQ(stats->attempts[0].status.code(), StatusCode::kTimeout);
  EXPECT_EQ(stats->attempts[1].status.code(), StatusCode::kTransferFailed);
  EXPECT_TRUE(stats->attempts[2].status.ok());
  EXPECT_EQ(stats->source, (*good)->endpoint());
  // Resumed: the broken source's two verified chunks were kept, the good one sent the rest.
  const uint64_t total = source.view.total_bytes();
  EXPECT_EQ(stats->attempts[1].bytes, FirstChunksBytes(source.view, SmallChunks().chunk_bytes, 2));
  EXPECT_EQ(stats->attempts[1].bytes + stats->attempts[2].bytes, total);
  EXPECT_LE(stats->bytes_received, total + options.window * SmallChunks().chunk_bytes);
}

// A delta load whose changed chunks alternate with unchanged ones: 2,560 separate ranges, more
// than one Request carries (2,000), so the client asks in two Requests and gets every one.
TEST_F(ServerClientTest, ADeltaLoadOfScatteredChunksAsksInSeveralRequests) {
  constexpr size_t kChunk = 4096, kChunks = 5120;
  std::vector<unsigned char> bytes(kChunk * kChunks);
  std::mt19937_64 rng(seed_);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng());
  std::vector<unsigned char> older = bytes;
  for (size_t c = 0; c < kChunks; c += 2) older[c * kChunk] ^= 1;  // every other chunk differs
  ModelView source, dest;
  source.tensors.push_back(
      {"w", DType::kU8, {static_cast<int64_t>(bytes.size())}, bytes.data(), bytes.size()});
  dest.tensors.push_back(
      {"w", DType::kU8, {static_cast<int64_t>(older.size())}, older.data(), older.size()});
  ServerOptions server_options = SmallChunks();
  server_options.chunk_bytes = kChunk;
  auto server = internal::StartServer(server_options, source, Plane(transport_));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.destination_filled = true;
  Result<LoadStats> stats = internal::Load(options, dest, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(older, bytes);
  EXPECT_EQ(stats->bytes_reused, bytes.size() / 2);
  EXPECT_EQ(stats->attempts.at(0).bytes, bytes.size() / 2);
}

// Striping in one process (so that it also runs under the sanitizers): three sources, two at
// a time, disjoint chunks from each, every byte once; the third is never needed.
// A striped load's sources, every one of which must have succeeded: the bytes they delivered.
uint64_t DeliveredBySucceededSources(const LoadStats& stats) {
  uint64_t delivered = 0;
  for (const SourceAttempt& attempt : stats.attempts) {
    EXPECT_TRUE(attempt.status.ok()) << attempt.source << ": " << attempt.status.ToString();
    delivered += attempt.bytes;
  }
  return delivered;
}

TEST_F(ServerClientTest, AStripedLoadTakesDisjointChunksFromTwoSourcesAtOnce) {
  OwnedModel source(60, seed_, true);
  std::vector<std::unique_ptr<Server>> servers;
  ClientOptions options = ClientFor("unused");
  options.sources.clear();
  for (int i = 0; i < 3; ++i) {
    auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    options.sources.push_back((*server)->endpoint());
    servers.push_back(std::move(*server));
  }
  options.stripe = 2;
  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
  // Which of the two delivered how much depends on scheduling; together, every byte once.
  ASSERT_LE(stats->attempts.size(), 2u) << "the third source was never needed";
  EXPECT_EQ(DeliveredBySucceededSources(*stats), source.view.total_bytes());
  EXPECT_EQ(stats->bytes_received, source.view.total_bytes()) << "nothing sent twice";
  EXPECT_TRUE(VerifyModel(dest.view, *stats).ok());
}

// Chunks verified from one source are kept only if the next holds the same content: same table,
// other bytes (another fine-tune, say) and the load starts over from the next source, whole.
TEST_F(ServerClientFaultTest, ASourceWithOtherContentIsLoadedWholeNotMixedWithTheFirst) {
  OwnedModel first(30, seed_, true);
  OwnedModel second = first.EmptyLike();
  for (auto& tensor : second.storage) std::fill(tensor.begin(), tensor.end(), 0x77);
  auto a = internal::StartServer(SmallChunks(), first.view, Plane(transport_));
  auto b = internal::StartServer(SmallChunks(), second.view, Plane(transport_));
  ASSERT_TRUE(a.ok() && b.ok());
  OwnedModel dest = first.EmptyLike();
  ClientOptions options = ClientFor((*a)->endpoint());
  options.sources.push_back((*b)->endpoint());
  FailingFirstPlane plane(
      transfer::MakeFaultyTransport(transport_, {transfer::FaultSpec::Kind::kFail, 3}), transport_);
  LogCapture log;
  Result<LoadStats> stats = internal::Load(options, dest.view, plane);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(second)) << "all of it from the second source";
  ASSERT_EQ(stats->attempts.size(), 2u);
  EXPECT_EQ(stats->attempts[0].bytes, FirstChunksBytes(first.view, SmallChunks().chunk_bytes, 3));
  EXPECT_EQ(stats->attempts[1].bytes, first.view.total_bytes());
  EXPECT_TRUE(log.Saw("holds other content than the source")) << log.All();
  EXPECT_TRUE(VerifyModel(dest.view, *stats).ok());
}

// The tensors `indices` of `model`, in that order, with their own copy of its bytes or zeros.
OwnedModel Pick(const OwnedModel& model, const std::vector<int>& indices, bool copy_bytes) {
  OwnedModel picked(0, 0, false);
  for (int i : indices) {
    picked.storage.push_back(copy_bytes ? model.storage[i]
                                        : std::vector<unsigned char>(model.storage[i].size()));
  }
  for (size_t k = 0; k < indices.size(); ++k) {
    TensorView t = model.view.tensors[indices[k]];
    t.data = picked.storage[k].empty() ? nullptr : picked.storage[k].data();
    picked.view.tensors.push_back(t);
  }
  return picked;
}

std::vector<int> Range(int first, int end) {
  std::vector<int> indices;
  for (int i = first; i < end; ++i) indices.push_back(i);
  return indices;
}

const std::vector<unsigned char>& BytesOf(const OwnedModel& model, const std::string& name) {
  for (size_t i = 0; i < model.view.tensors.size(); ++i) {
    if (model.view.tensors[i].name == name) return model.storage[i];
  }
  throw std::runtime_error("no tensor " + name);
}

// A pipeline stage of another split: the client holds layers 5 and 10..39 in reverse order and
// declares stage 1 of 2; the source holds all 80 in storage order as stage 0 of 1. The patterns
// pick 10..39: exactly those arrive, verified; layer.5 stays untouched.
TEST_F(ServerClientTest, APartialLoadFillsOnlyTheSelectedTensorsFromASourceWithAnotherLayout) {
  OwnedModel source(80, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  std::vector<int> held = Range(10, 40);
  std::reverse(held.begin(), held.end());
  held.push_back(5);
  OwnedModel dest = Pick(source, held, false);
  ClientOptions options = ClientFor((*server)->endpoint());
  options.tensors = {"layer.1?", "layer.2?", "layer.3?"};
  options.partition.pp_size = 2;
  options.partition.pp_rank = 1;
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  uint64_t selected_bytes = 0;
  for (int i = 10; i < 40; ++i) {
    const std::string name = "layer." + std::to_string(i);
    EXPECT_EQ(BytesOf(dest, name), BytesOf(source, name)) << name;
    selected_bytes += BytesOf(source, name).size();
  }
  EXPECT_EQ(BytesOf(dest, "layer.5"), std::vector<unsigned char>(BytesOf(source, "layer.5").size()))
      << "an unselected tensor is not touched";
  EXPECT_EQ(stats->tensors, 30u);
  EXPECT_EQ(stats->bytes, selected_bytes);
  EXPECT_EQ(stats->bytes_received, selected_bytes);
  ASSERT_EQ(stats->tensor_names.size(), 30u);
  EXPECT_EQ(stats->tensor_names.front(), "layer.10") << "streamed in name order";
  EXPECT_TRUE(VerifyModel(dest.view, *stats).ok());
  EXPECT_TRUE(testing::WaitFor([&] { return (*server)->stats().clients_served == 1; }, 30s));
  EXPECT_EQ((*server)->stats().bytes_sent, selected_bytes) << "the source sent nothing else";

  // A pattern that matches nothing here is refused before any source is asked.
  options.tensors = {"layer.1?", "layer.99"};
  Result<LoadStats> typo = internal::Load(options, dest.view, *Plane(transport_));
  EXPECT_EQ(typo.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(typo.status().message().find("'layer.99' matches none of the 31 tensors"),
            std::string::npos)
      << typo.status().message();
}

// The patterns must select the same tensors on both sides: a source that lacks some, holds one
// differently, or holds another tensor-parallel shard is refused, naming what differs.
TEST_F(ServerClientFaultTest, APartialLoadIsRefusedNamingWhatTheSourceSelectsDifferently) {
  OwnedModel full(40, seed_, true);
  OwnedModel stage = Pick(full, Range(0, 25), true);  // a source holding layers 0..24
  auto server = internal::StartServer(SmallChunks(), stage.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  OwnedModel dest = full.EmptyLike();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.tensors = {"layer.2*"};  // here layer.2 and 20..29; there layer.2 and 20..24
  Result<LoadStats> lacking = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_EQ(lacking.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(lacking.status().message().find(
                "the patterns select 6 tensors on the source, 11 here; 5 differ: the source has "
                "no 'layer.25'"),
            std::string::npos)
      << lacking.status().message();

  options.tensors = {"layer.1?"};  // both sides hold 10..19
  dest.view.tensors[13].dtype = DType::kI64;
  ASSERT_EQ(full.view.tensors[13].dtype, DType::kF64) << "the same size, another dtype";
  Result<LoadStats> other = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_EQ(other.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(other.status().message().find("1 differ: source 'layer.13' F64"), std::string::npos)
      << other.status().message();
  dest.view.tensors[13].dtype = DType::kF64;

  options.partition.tp_size = 2;  // the same names, another shard's bytes
  options.partition.tp_rank = 1;
  Result<LoadStats> shard = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_EQ(shard.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(shard.status().message().find("partition.tp_size"), std::string::npos)
      << shard.status().message();
  EXPECT_EQ((*server)->stats().refused, 3u);
  EXPECT_EQ((*server)->stats().bytes_sent, 0u);
}

// The stream of a partial load is the same from any source that holds the selected tensors, so
// a striped load takes disjoint parts of it from two sources of different layouts and chunk
// sizes: one holding the whole model, one holding a stage in another storage order.
TEST_F(ServerClientTest, AStripedPartialLoadTakesOneStreamFromSourcesOfDifferentLayouts) {
  OwnedModel full(70, seed_, true);
  std::vector<int> stage = Range(0, 50);
  std::reverse(stage.begin(), stage.end());
  OwnedModel other_layout = Pick(full, stage, true);
  ServerOptions small = SmallChunks();
  small.chunk_bytes = 32 << 10;
  auto a = internal::StartServer(SmallChunks(), full.view, Plane(transport_));
  auto b = internal::StartServer(small, other_layout.view, Plane(transport_));
  ASSERT_TRUE(a.ok() && b.ok());
  OwnedModel dest = Pick(full, Range(20, 50), false);
  ClientOptions options = ClientFor((*a)->endpoint());
  options.sources.push_back((*b)->endpoint());
  options.stripe = 2;
  options.tensors = {"*"};
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  OwnedModel expected = Pick(full, Range(20, 50), true);
  EXPECT_TRUE(dest.SameBytes(expected));
  EXPECT_EQ(DeliveredBySucceededSources(*stats), expected.view.total_bytes());
  EXPECT_EQ(stats->bytes_received, expected.view.total_bytes()) << "nothing sent twice";
  EXPECT_TRUE(VerifyModel(dest.view, *stats).ok());
}

// A selection whose names exceed what one Register carries travels as its patterns, which then
// must select the same tensors on the source: a source holding more of them is refused.
TEST_F(ServerClientFaultTest, ASelectionTooLargeToNameTravelsAsItsPatterns) {
  const int kTensors = 1500;  // x ~70-character names: more than a Register's 60 KiB
  std::vector<unsigned char> bytes(kTensors * 8);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 31 + seed_);
  auto layout = [&](int tensors, std::vector<unsigned char>& memory) {
    ModelView model;
    for (int i = 0; i < tensors; ++i) {
      model.tensors.push_back({"model.layers." + std::to_string(i) +
                                   ".block_sparse_moe.experts.gate_and_up_projection.weight",
                               DType::kU8,
                               {8},
                               memory.data() + 8 * i,
                               8});
    }
    return model;
  };
  std::vector<unsigned char> more(bytes);
  more.resize(bytes.size() + 8);
  auto same = internal::StartServer(SmallChunks(), layout(kTensors, bytes), Plane(transport_));
  auto larger = internal::StartServer(SmallChunks(), layout(kTensors + 1, more), Plane(transport_));
  ASSERT_TRUE(same.ok() && larger.ok());
  std::vector<unsigned char> received(bytes.size());
  ModelView dest = layout(kTensors, received);
  ClientOptions options = ClientFor((*larger)->endpoint());
  options.tensors = {"model.layers.*"};
  Result<LoadStats> refused = internal::Load(options, dest, *Plane(transport_));
  ASSERT_EQ(refused.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(refused.status().message().find("the patterns select 1501 tensors on the source, "
                                            "1500 here; 1 differ"),
            std::string::npos)
      << refused.status().message();
  options.sources = {(*same)->endpoint()};
  Result<LoadStats> stats = internal::Load(options, dest, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(received, bytes);
  EXPECT_EQ(stats->tensors, static_cast<uint64_t>(kTensors));
}

TEST_F(ServerClientFaultTest, ClientsBeyondTheLimitAreToldBusyAndAllAreEventuallyServed) {
  OwnedModel source(60, seed_, true);
  ServerOptions options = SmallChunks();
  options.max_concurrent_transfers = 1;
  options.busy_retry_hint = 20ms;
  auto server = internal::StartServer(options, source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  const int kClients = 4;
  std::vector<OwnedModel> dests;
  for (int i = 0; i < kClients; ++i) dests.push_back(source.EmptyLike());
  std::vector<Status> results(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      Result<LoadStats> r =
          internal::Load(ClientFor((*server)->endpoint()), dests[i].view, *Plane(transport_));
      results[i] = r.ok() ? Status::Ok() : r.status();
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_TRUE(results[i].ok()) << results[i].ToString();
    EXPECT_TRUE(dests[i].SameBytes(source)) << "client " << i;
  }
  EXPECT_GT((*server)->stats().busy, 0u) << "with one slot, concurrent clients must hear Busy";
}

// Sends raw bytes to the server and returns its decoded reply.
Result<wire::Envelope> RawExchange(const std::string& endpoint, const std::string& payload) {
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 5000);
  s.connect(endpoint);
  s.send(zmq::buffer(payload));
  zmq::message_t reply;
  if (!s.recv(reply)) return Status(StatusCode::kTimeout, "no reply");
  return Decode(reply.data(), reply.size(), kMaxClientMessageBytes);
}

// A Register for `model` sent from a bare socket that then does nothing more: no heartbeat, no
// MPI connect, no Done.
Result<wire::Envelope> RegisterRaw(const std::string& endpoint, const ModelView& model) {
  wire::Envelope request;
  ToWire(MakeFingerprint(model, "", {}), request.mutable_register_()->mutable_fingerprint());
  return RawExchange(endpoint, Encode(request));
}

// Protocol version 3: a Request naming chunks the stream does not have is refused naming the
// range and ends its session; a version-3 client (no partial loads) is refused naming both
// versions.
// A client that is heard from keeps its session between Requests, however long: a striped client
// with nothing left to claim waits for its other sources (PROTOCOL.md, section 4.6). One that
// falls silent is given up on after the done timeout.
TEST_F(ServerClientFaultTest, HeartbeatsKeepASessionWaitingForRequestsAndSilenceEndsIt) {
  OwnedModel source(10, seed_, true);
  LogCapture log;
  ServerOptions options = SmallChunks();
  // Long enough that a heartbeat every 100 ms never misses it on a loaded machine.
  options.done_timeout = 2s;
  auto server = internal::StartServer(options, source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  const std::string endpoint = (*server)->endpoint();
  Result<wire::Envelope> accepted = RegisterRaw(endpoint, source.view);
  ASSERT_TRUE(accepted.ok() && accepted->has_accept()) << accepted.status().ToString();
  const uint64_t session = accepted->accept().session_id();
  Result<std::unique_ptr<transfer::Channel>> channel = transport_->Connect(
      accepted->accept().mpi_port(), std::chrono::steady_clock::now() + 5s, nullptr);
  ASSERT_TRUE(channel.ok()) << channel.status().ToString();
  wire::Envelope beat;
  beat.mutable_heartbeat()->set_session_id(session);
  // Three done timeouts without a Request, a heartbeat every 100 ms: the session stays.
  for (const auto until = std::chrono::steady_clock::now() + 6s;
       std::chrono::steady_clock::now() < until;) {
    Result<wire::Envelope> answer = RawExchange(endpoint, Encode(beat));
    ASSERT_TRUE(answer.ok() && answer->has_heartbeat())
        << "a session heard from was ended: " << log.All();
    std::this_thread::sleep_for(100ms);
  }
  // Silent: it ends, and the log says why.
  ASSERT_TRUE(testing::WaitFor([&] { return log.Saw("was not heard from for 2000 ms"); }, 20s))
      << log.All();
  Result<wire::Envelope> gone = RawExchange(endpoint, Encode(beat));
  ASSERT_TRUE(gone.ok() && gone->has_reject());
  EXPECT_NE(gone->reject().reason().find("not active"), std::string::npos);
  (*channel)->Abandon();
}

TEST_F(ServerClientFaultTest, ABadRequestEndsItsSessionAndAVersion4ClientIsRefusedByName) {
  OwnedModel source(10, seed_, true);
  LogCapture log;
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  const std::string endpoint = (*server)->endpoint();

  Result<wire::Envelope> accepted = RegisterRaw(endpoint, source.view);
  ASSERT_TRUE(accepted.ok() && accepted->has_accept()) << accepted.status().ToString();
  const uint64_t session = accepted->accept().session_id();
  const uint64_t chunks = accepted->accept().manifest().chunk_digests_size();
  wire::Envelope bad;
  bad.mutable_request()->set_session_id(session);
  wire::ChunkRange* range = bad.mutable_request()->add_ranges();
  range->set_first(chunks - 1);
  range->set_count(2);
  Result<wire::Envelope> refused = RawExchange(endpoint, Encode(bad));
  ASSERT_TRUE(refused.ok() && refused->has_reject()) << refused.status().ToString();
  EXPECT_EQ(refused->reject().code(), wire::INVALID_REQUEST);
  EXPECT_NE(refused->reject().reason().find("outside the " + std::to_string(chunks) + " chunks"),
            std::string::npos)
      << refused->reject().reason();
  EXPECT_TRUE(log.Saw("sent a bad Request")) << log.All();
  wire::Envelope beat;
  beat.mutable_heartbeat()->set_session_id(session);
  Result<wire::Envelope> gone = RawExchange(endpoint, Encode(beat));
  ASSERT_TRUE(gone.ok() && gone->has_reject());
  EXPECT_NE(gone->reject().reason().find("not active"), std::string::npos) << "session ended";

  // A version-4 client would not understand a Redirect.
  wire::Envelope v4;
  ToWire(MakeFingerprint(source.view, "", {}), v4.mutable_register_()->mutable_fingerprint());
  v4.set_protocol_version(4);
  Result<wire::Envelope> old = RawExchange(endpoint, v4.SerializeAsString());
  ASSERT_TRUE(old.ok() && old->has_reject());
  EXPECT_EQ(old->reject().code(), wire::PROTOCOL_MISMATCH);
  EXPECT_NE(old->reject().reason().find("protocol version 4, this build speaks 5"),
            std::string::npos)
      << old->reject().reason();

  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats = internal::Load(ClientFor(endpoint), dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
}

// Every malformed message gets a Reject whose code says what kind of problem it is
// (PROTOCOL.md, section 4.1): PROTOCOL_MISMATCH for what is not a netloader message of this
// version, INVALID_REQUEST for a well-formed one the server cannot act on.
TEST_F(ServerClientFaultTest, MalformedRequestsAreRejectedAndTheServerKeepsServing) {
  OwnedModel source(10, seed_, true);
  LogCapture log;
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  const std::string endpoint = (*server)->endpoint();
  struct Case {
    const char* what;
    std::string payload;
    wire::RejectCode code;
    std::string reason;
  };
  wire::Envelope future;
  future.mutable_register_();
  future.set_protocol_version(kProtocolVersion + 7);
  wire::Envelope stray;
  stray.mutable_heartbeat()->set_session_id(42);
  wire::Envelope accept;
  accept.mutable_accept()->set_session_id(1);
  const Case cases[] = {
      {"garbage", "\x12\x34 definitely not protobuf \xff", wire::PROTOCOL_MISMATCH,
       "is not a netloader message"},
      {"another version", future.SerializeAsString(), wire::PROTOCOL_MISMATCH,
       "protocol version " + std::to_string(kProtocolVersion + 7)},
      {"empty", "", wire::PROTOCOL_MISMATCH, "empty message"},
      {"over 64 KiB", std::string(100 << 10, 'x'), wire::PROTOCOL_MISMATCH,
       "102400 bytes exceeds the limit of 65536"},
      {"a Heartbeat for no session", Encode(stray), wire::INVALID_REQUEST, "not active"},
      {"an Accept", Encode(accept), wire::INVALID_REQUEST, "this was Accept"},
  };
  for (const Case& c : cases) {
    Result<wire::Envelope> reply = RawExchange(endpoint, c.payload);
    ASSERT_TRUE(reply.ok()) << c.what << ": " << reply.status().ToString();
    ASSERT_TRUE(reply->has_reject()) << c.what;
    EXPECT_EQ(reply->reject().code(), c.code) << c.what << ": " << reply->reject().reason();
    EXPECT_NE(reply->reject().reason().find(c.reason), std::string::npos)
        << c.what << ": " << reply->reject().reason();
  }
  EXPECT_TRUE(log.Saw("WARN refused an unexpected Accept message")) << log.All();

  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats = internal::Load(ClientFor(endpoint), dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
}

// A Register with a missing or out-of-range partition, or a malformed table digest, is not a
// fingerprint mismatch (nothing to compare) but an invalid request naming the field.
TEST_F(ServerClientFaultTest, MalformedRegistersAreInvalidRequestsNamingTheField) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  auto with = [&](void (*mutate)(wire::Register*)) {
    wire::Envelope request;
    ToWire(MakeFingerprint(source.view, "", {}),
           request.mutable_register_()->mutable_fingerprint());
    mutate(request.mutable_register_());
    return Encode(request);
  };
  struct Case {
    const char* what;
    std::string payload;
    const char* reason;
  } cases[] = {
      {"no partition", with([](wire::Register* r) { r->mutable_fingerprint()->clear_partition(); }),
       "Register.fingerprint.partition is missing"},
      {"tp_rank = tp_size", with([](wire::Register* r) {
         r->mutable_fingerprint()->mutable_partition()->set_tp_size(2);
         r->mutable_fingerprint()->mutable_partition()->set_tp_rank(2);
       }),
       "tp_rank 2 is outside [0, 2)"},
      {"pp_size 0", with([](wire::Register* r) {
         r->mutable_fingerprint()->mutable_partition()->set_pp_size(0);
       }),
       "pp_size must be >= 1"},
      {"bad digest",
       with([](wire::Register* r) { r->mutable_fingerprint()->set_table_digest("XYZ"); }),
       "table_digest 'XYZ' is not 32 lowercase hex digits"},
      {"bad pattern", with([](wire::Register* r) {
         r->add_tensors("layer.*");
         r->add_tensors("layer.1\\");
       }),
       "Register.tensors[1]: tensor pattern 'layer.1\\' ends in a lone backslash"},
      {"overlong serve_endpoint",
       with([](wire::Register* r) { r->set_serve_endpoint("tcp://" + std::string(300, 'h')); }),
       "Register.serve_endpoint is 306 bytes, more than 256"},
  };
  for (const Case& c : cases) {
    Result<wire::Envelope> reply = RawExchange((*server)->endpoint(), c.payload);
    ASSERT_TRUE(reply.ok() && reply->has_reject()) << c.what;
    EXPECT_EQ(reply->reject().code(), wire::INVALID_REQUEST) << c.what;
    EXPECT_NE(reply->reject().reason().find(c.reason), std::string::npos)
        << c.what << ": " << reply->reject().reason();
    EXPECT_TRUE(reply->reject().diffs().empty()) << c.what;
  }
  EXPECT_EQ((*server)->stats().refused, 6u);
}

// What a REQ socket sends (an empty delimiter frame, then the payload) is refused in a reply it
// can receive, instead of leaving it to wait out its deadline; other multi-frame messages too.
TEST_F(ServerClientFaultTest, MessagesOfSeveralFramesAreRefusedInAReplyTheSenderReceives) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  wire::Envelope request;
  ToWire(MakeFingerprint(source.view, "", {}), request.mutable_register_()->mutable_fingerprint());
  const std::string payload = Encode(request);
  zmq::context_t ctx;
  for (auto type : {zmq::socket_type::req, zmq::socket_type::dealer}) {
    zmq::socket_t s(ctx, type);
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::rcvtimeo, 30000);
    s.connect((*server)->endpoint());
    if (type == zmq::socket_type::dealer) {  // three frames
      s.send(zmq::str_buffer("a"), zmq::send_flags::sndmore);
      s.send(zmq::str_buffer("b"), zmq::send_flags::sndmore);
    }
    s.send(zmq::buffer(payload));
    zmq::message_t reply;
    ASSERT_TRUE(s.recv(reply)) << "no reply";
    Result<wire::Envelope> decoded = Decode(reply.data(), reply.size(), kMaxClientMessageBytes);
    ASSERT_TRUE(decoded.ok() && decoded->has_reject()) << decoded.status().ToString();
    EXPECT_EQ(decoded->reject().code(), wire::PROTOCOL_MISMATCH);
    const std::string expected = type == zmq::socket_type::req
                                     ? "this one had 2 frames, as a REQ socket sends them"
                                     : "this one had 3 frames";
    EXPECT_NE(decoded->reject().reason().find(expected), std::string::npos)
        << decoded->reject().reason();
  }
}

// Past ZeroMQ's 256 KiB cut-off the connection is closed before the server sees the message:
// no reply can come (PROTOCOL.md, section 2). The server is unharmed.
TEST_F(ServerClientFaultTest, AMessageBeyondZeroMqsCutOffGetsNoReplyAndHarmsNothing) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 1000);
  s.connect((*server)->endpoint());
  s.send(zmq::buffer(std::string(kServerCutoffBytes + 1, 'x')));
  zmq::message_t reply;
  EXPECT_FALSE(s.recv(reply)) << "a reply to a message ZeroMQ cut off";
  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats =
      internal::Load(ClientFor((*server)->endpoint()), dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
}

// A Done for a session that is not active gets no reply, as every Done, but a WARN line.
TEST_F(ServerClientFaultTest, ADoneForNoActiveSessionIsLogged) {
  OwnedModel source(10, seed_, true);
  LogCapture log;
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  wire::Envelope done;
  done.mutable_done()->set_session_id(0x1234);
  done.mutable_done()->set_verified(true);
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 1000);
  s.connect((*server)->endpoint());
  s.send(zmq::buffer(Encode(done)));
  EXPECT_TRUE(
      log.Saw("WARN ignored a Done (verified) for session 0000000000001234, which is not "
              "active on this server"))
      << log.All();
}

// Another layout: the refusal names the first tensors that differ and both tensor counts, from
// the table the server sends with that refusal only.
TEST_F(ServerClientFaultTest, ALayoutMismatchNamesTheTensorsThatDiffer) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  ASSERT_EQ(dest.view.tensors[3].dtype, DType::kF64);
  dest.view.tensors[3].dtype = DType::kI64;  // same size, another dtype
  Result<LoadStats> stats =
      internal::Load(ClientFor((*server)->endpoint()), dest.view, *Plane(transport_));
  ASSERT_EQ(stats.status().code(), StatusCode::kFingerprintMismatch);
  const std::string& message = stats.status().message();
  const std::string shape = "[" + std::to_string(dest.view.tensors[3].shape[0]) + "]";
  EXPECT_NE(message.find("the source has 10 tensors, this side 10; 1 differ by position, first: "
                         "tensor 3: source 'layer.3' F64 " +
                         shape),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("this side 'layer.3' I64 " + shape), std::string::npos) << message;

  OwnedModel more = source.EmptyLike();  // the same ten tensors, and one more at the end
  std::vector<unsigned char> extra(16);
  more.view.tensors.push_back({"layer.10", DType::kU8, {16}, extra.data(), extra.size()});
  Result<LoadStats> longer =
      internal::Load(ClientFor((*server)->endpoint()), more.view, *Plane(transport_));
  ASSERT_EQ(longer.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(longer.status().message().find("the source has 10 tensors, this side 11"),
            std::string::npos)
      << longer.status().message();
  EXPECT_NE(longer.status().message().find(
                "1 differ by position, first: tensor 10: source none, this side 'layer.10' U8 "
                "[16] (16 bytes)"),
            std::string::npos)
      << longer.status().message();
}

// A ghost client (RegisterRaw, then nothing) takes a one-slot server's only slot. A real client
// arriving next is told Busy, and must be served within `within`, far below its own busy
// deadline (120 s) and the server's other deadline (60 s or none): the one of `options`' deadlines
// under test has to free the slot, and the ghost counts as one failed client.
void ExpectTheGhostsSlotIsFreedWithin(ServerOptions options, std::chrono::seconds within,
                                      uint64_t seed,
                                      const std::shared_ptr<transfer::Transport>& transport) {
  OwnedModel source(10, seed, true);
  options.max_concurrent_transfers = 1;
  auto server = internal::StartServer(options, source.view, Plane(transport));
  ASSERT_TRUE(server.ok());
  Result<wire::Envelope> reply = RegisterRaw((*server)->endpoint(), source.view);
  ASSERT_TRUE(reply.ok() && reply->has_accept()) << "the ghost client takes the only slot";
  OwnedModel dest = source.EmptyLike();
  ClientOptions client = ClientFor((*server)->endpoint());
  client.busy_timeout = 120s;  // the ghost's slot is freed by the server's deadline, not this
  const auto start = std::chrono::steady_clock::now();
  Result<LoadStats> stats = internal::Load(client, dest.view, *Plane(transport));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, within);
  EXPECT_TRUE(dest.SameBytes(source));
  EXPECT_EQ((*server)->stats().clients_failed, 1u);
}

TEST_F(ServerClientFaultTest, ClientThatRegistersAndNeverConnectsCostsAtMostTheConnectDeadline) {
  ServerOptions options = SmallChunks();
  options.connect_timeout = 300ms;
  options.heartbeat_timeout = 0s;  // not what frees the slot
  ExpectTheGhostsSlotIsFreedWithin(options, 30s, seed_, transport_);
}

TEST_F(ServerClientFaultTest,
       ClientThatRegistersThenFallsSilentLosesItsSlotAtTheHeartbeatDeadline) {
  ServerOptions options = SmallChunks();
  options.connect_timeout = 60s;   // not what frees the slot
  options.heartbeat_timeout = 2s;  // the least a server may use
  ExpectTheGhostsSlotIsFreedWithin(options, 30s, seed_, transport_);
}

TEST_F(ServerClientFaultTest, OnlyAClientHoldingTheSharedSecretLearnsAnything) {
  testing::TempDir tmp;
  OwnedModel source(10, seed_, true);
  ServerOptions server_options = SmallChunks();
  server_options.secret = *LoadOrCreateSecret(tmp / "secret");
  auto server = internal::StartServer(server_options, source.view, Plane(transport_));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  struct Case {
    const char* who;
    std::string secret;
    const char* reason;
  };
  const Case cases[] = {{"another secret", *LoadOrCreateSecret(tmp / "other"), "shared secret"},
                        {"no secret", "", "this side runs without one (--no-auth)"}};
  OwnedModel dest = source.EmptyLike();
  for (const Case& c : cases) {
    ClientOptions options = ClientFor((*server)->endpoint());
    options.secret = c.secret;
    options.register_timeout = 120s;  // "at once" is far below it
    const auto start = std::chrono::steady_clock::now();
    Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
    EXPECT_EQ(stats.status().code(), StatusCode::kPermissionDenied) << c.who;
    EXPECT_NE(stats.status().message().find(c.reason), std::string::npos)
        << c.who << ": " << stats.status().message();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 60s) << c.who << ": fails at once";
    EXPECT_TRUE(dest.SameBytes(source.EmptyLike())) << c.who << ": nothing was sent";
  }
  EXPECT_TRUE(testing::WaitFor([&] { return (*server)->stats().unauthenticated >= 2; }, 30s));
  EXPECT_EQ((*server)->stats().refused, 0u) << "no Register ever reached the server";

  ClientOptions options = ClientFor((*server)->endpoint());
  options.secret = server_options.secret;
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
}

TEST_F(ServerClientFaultTest, AClientWithASecretRefusesASourceThatRunsWithout) {
  testing::TempDir tmp;
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.secret = *LoadOrCreateSecret(tmp / "secret");
  Result<LoadStats> stats = internal::Load(options, dest.view, *Plane(transport_));
  EXPECT_EQ(stats.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(stats.status().message().find("--no-auth"), std::string::npos)
      << stats.status().message();
}

// Peers that connect and then say nothing: raw TCP connections that never send the ZeroMQ
// greeting (to a server that requires the secret, so they also never finish a handshake), and
// ZeroMQ sockets that never send a message. None of them holds anything up.
TEST_F(ServerClientFaultTest, ConnectionsThatSendNothingHoldNothingUp) {
  testing::TempDir tmp;
  OwnedModel source(10, seed_, true);
  ServerOptions options = SmallChunks();
  options.secret = *LoadOrCreateSecret(tmp / "secret");
  auto server = internal::StartServer(options, source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  const std::string endpoint = (*server)->endpoint();
  const int port = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
  std::vector<int> mute;
  for (int i = 0; i < 20; ++i) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    mute.push_back(fd);
  }
  zmq::context_t context;
  std::vector<zmq::socket_t> silent;
  for (int i = 0; i < 5; ++i) {
    silent.emplace_back(context, zmq::socket_type::dealer);
    silent.back().set(zmq::sockopt::linger, 0);
    silent.back().connect(endpoint);
  }
  OwnedModel dest = source.EmptyLike();
  ClientOptions client = ClientFor(endpoint);
  client.secret = options.secret;
  client.register_timeout = 120s;  // held up, the load would wait this out
  const auto start = std::chrono::steady_clock::now();
  Result<LoadStats> stats = internal::Load(client, dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s);
  const auto stopping = std::chrono::steady_clock::now();
  (*server)->Stop();  // held up by a silent connection, it would never return (ctest's deadline)
  EXPECT_LT(std::chrono::steady_clock::now() - stopping, 30s);
  for (int fd : mute) close(fd);
}

TEST_F(ServerClientFaultTest, StopReturnsPromptlyWhileAClientIsExpected) {
  OwnedModel source(10, seed_, true);
  ServerOptions options = SmallChunks();
  options.connect_timeout = 60s;
  auto server = internal::StartServer(options, source.view, Plane(transport_));
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE(RegisterRaw((*server)->endpoint(), source.view).ok());
  const auto start = std::chrono::steady_clock::now();
  (*server)->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s) << "not the 60 s connect deadline";
}

TEST(ServerOptionsTest, BadOptionsAreRefusedNamingTheOption) {
  OwnedModel source(3, 1, true);
  ServerOptions options;
  options.chunk_bytes = 10;
  auto server = internal::StartServer(options, source.view, Plane(transfer::MakeInprocTransport()));
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("chunk_bytes"), std::string::npos);
  options = ServerOptions();
  options.partition.tp_rank = 2;
  server = internal::StartServer(options, source.view, Plane(transfer::MakeInprocTransport()));
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("tp_rank 2"), std::string::npos);
  options = ServerOptions();
  options.secret = "not a secret";
  server = internal::StartServer(options, source.view, Plane(transfer::MakeInprocTransport()));
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("ServerOptions::secret"), std::string::npos);
  options = ServerOptions();
  options.listen = "tcp://not-an-address:99999";
  server = internal::StartServer(options, source.view, Plane(transfer::MakeInprocTransport()));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kUnavailable);
  options = ServerOptions();
  options.advertise = "tcp://10.0.0.1:7000";
  server = internal::StartServer(options, source.view, Plane(transfer::MakeInprocTransport()));
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("advertise must be a host name"), std::string::npos);
}

// A server bound to every interface names itself by the address it advertises, with the port
// it bound; a client reaches it there.
TEST_F(ServerClientTest, AServerOnEveryInterfaceIsReachedAtTheAddressItAdvertises) {
  OwnedModel source(8, seed_, true);
  ServerOptions options = SmallChunks();
  options.listen = "tcp://0.0.0.0:0";
  options.advertise = "localhost";
  auto server = internal::StartServer(options, source.view, Plane(transport_));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const std::string endpoint = (*server)->endpoint();
  ASSERT_EQ(endpoint.rfind("tcp://localhost:", 0), 0u) << endpoint;
  EXPECT_NE(endpoint.substr(16), "0");
  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats = internal::Load(ClientFor(endpoint), dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
}

}  // namespace
}  // namespace netloader
