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
#include <random>
#include <thread>

#include "client/client_internal.h"
#include "netloader/secret.h"
#include "netloader/src/manifest.h"
#include "netloader/src/wire.h"
#include "server/server_internal.h"
#include "tests/support/test_util.h"
#include "transfer/fault_transport.h"
#include "transfer/inproc_transport.h"

namespace netloader {
namespace {

using namespace std::chrono_literals;

// A model of `n` tensors of mixed dtypes, sizes drawn from a printed seed; owns its bytes.
struct OwnedModel {
  std::vector<std::vector<unsigned char>> storage;
  ModelView view;

  OwnedModel(int n, uint64_t seed, bool fill) {
    std::mt19937_64 rng(seed);
    const DType dtypes[] = {DType::kBF16, DType::kF32, DType::kI8, DType::kF64, DType::kBool};
    storage.resize(n);
    for (int i = 0; i < n; ++i) {
      const DType dtype = dtypes[i % 5];
      const int64_t elements = i == 0 ? 0 : (i == 1 ? 1 : static_cast<int64_t>(rng() % 70000));
      storage[i].resize(elements * DTypeSize(dtype));
      if (fill) {
        for (auto& b : storage[i]) b = static_cast<unsigned char>(rng());
      }
      view.tensors.push_back({"layer." + std::to_string(i), dtype,
                              i == 1 ? std::vector<int64_t>{} : std::vector<int64_t>{elements},
                              storage[i].empty() ? nullptr : storage[i].data(), storage[i].size()});
    }
  }
  // An empty destination with the same layout.
  OwnedModel EmptyLike() const {
    OwnedModel copy = *this;
    for (size_t i = 0; i < copy.storage.size(); ++i) {
      std::fill(copy.storage[i].begin(), copy.storage[i].end(), 0);
      copy.view.tensors[i].data = copy.storage[i].empty() ? nullptr : copy.storage[i].data();
    }
    return copy;
  }
  bool SameBytes(const OwnedModel& other) const { return storage == other.storage; }
};

internal::TransportFactory Inproc(std::shared_ptr<transfer::Transport> t) {
  return [t](const std::string&) -> Result<std::shared_ptr<transfer::Transport>> { return t; };
}

ServerOptions SmallChunks() {
  ServerOptions o;
  o.listen = "tcp://127.0.0.1:0";
  o.chunk_bytes = 64 << 10;
  o.connect_timeout = 5s;
  o.stall_timeout = 5s;
  o.done_timeout = 5s;
  return o;
}

ClientOptions ClientFor(const std::string& endpoint) {
  ClientOptions o;
  o.sources = {endpoint};
  o.register_timeout = 5s;
  o.stall_timeout = 5s;
  o.connect_timeout = 5s;
  return o;
}

class ServerClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    std::printf("seed %llu\n", static_cast<unsigned long long>(seed_));
  }
  uint64_t seed_ = 0;
  std::shared_ptr<transfer::Transport> transport_ = transfer::MakeInprocTransport();
};

// The fault matrix (README, "Failure behaviour and security"): suites named *FaultTest also carry
// the ctest label `fault`.
class ServerClientFaultTest : public ServerClientTest {};

TEST_F(ServerClientTest, LoadsEveryByteAndReportsStatistics) {
  OwnedModel source(120, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, transport_);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  OwnedModel dest = source.EmptyLike();
  uint64_t last_progress = 0;
  ClientOptions options = ClientFor((*server)->endpoint());
  options.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_GE(done, last_progress);
    EXPECT_EQ(total, source.view.total_bytes());
    last_progress = done;
  };
  Result<LoadStats> stats = internal::Load(options, dest.view, Inproc(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
  EXPECT_EQ(stats->bytes, source.view.total_bytes());
  EXPECT_EQ(stats->tensors, 120u);
  EXPECT_EQ(last_progress, source.view.total_bytes());
  EXPECT_GT(stats->chunks, 10u);
  // The server counts the client as served once it reads the verified Done.
  for (int i = 0; i < 200 && (*server)->stats().clients_served == 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ((*server)->stats().clients_served, 1u);
  EXPECT_EQ((*server)->stats().bytes_sent, source.view.total_bytes());
}

TEST_F(ServerClientTest, ALoadedModelCanBeReverifiedLaterAgainstTheSourcesDigests) {
  OwnedModel source(40, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, transport_);
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats =
      internal::Load(ClientFor((*server)->endpoint()), dest.view, Inproc(transport_));
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
  auto server = internal::StartServer(SmallChunks(), source.view, transport_);
  ASSERT_TRUE(server.ok());
  OwnedModel other(11, seed_ + 1, false);
  Result<LoadStats> stats =
      internal::Load(ClientFor((*server)->endpoint()), other.view, Inproc(transport_));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(stats.status().message().find("table_digest"), std::string::npos)
      << stats.status().message();
  EXPECT_EQ((*server)->stats().refused, 1u);
}

TEST_F(ServerClientTest, RejectsClientWithDifferentPipelineRankNamingTheField) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, transport_);
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.partition.pp_size = 2;
  options.partition.pp_rank = 1;
  Result<LoadStats> stats = internal::Load(options, dest.view, Inproc(transport_));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(stats.status().message().find("partition.pp_size: server='1' client='2'"),
            std::string::npos)
      << stats.status().message();
  EXPECT_NE(stats.status().message().find("partition.pp_rank: server='0' client='1'"),
            std::string::npos)
      << stats.status().message();
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
  auto server = internal::StartServer(server_options, source.view, transport);
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.model_id = "org/m@1";
  options.partition = server_options.partition;
  ASSERT_TRUE(internal::Load(options, dest.view, Inproc(transport)).ok()) << "control: all match";
  GetParam().mutate(options);
  Result<LoadStats> stats = internal::Load(options, dest.view, Inproc(transport));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kFingerprintMismatch);
  const std::string& message = stats.status().message();
  EXPECT_NE(message.find(std::string(GetParam().field) + ": server="), std::string::npos)
      << message;
  EXPECT_EQ(message.find("; "), message.rfind("; ")) << "only one field differs: " << message;
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
  auto server = internal::StartServer(SmallChunks(), source.view, transport_);
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
        internal::Load(ClientFor((*server)->endpoint()), dest.view, Inproc(faulty));
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().code(), StatusCode::kChecksumMismatch);
    EXPECT_NE(stats.status().message().find("chunk " + std::to_string(chunk) + " ('layer."),
              std::string::npos)
        << stats.status().message();
  }
  // The server hears about each and frees the sessions.
  for (int i = 0; i < 300 && (*server)->stats().clients_failed < 2; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ((*server)->stats().clients_failed, 2u);
  EXPECT_EQ((*server)->stats().active_transfers, 0);
}

TEST_F(ServerClientFaultTest, FailsOverToTheNextSourceAfterAnUnreachableOneAndABrokenOne) {
  OwnedModel source(30, seed_, true);
  auto broken = internal::StartServer(SmallChunks(), source.view,
                                      transfer::MakeFaultyTransport(transport_, {}));
  auto good = internal::StartServer(SmallChunks(), source.view, transport_);
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
  auto failing = transfer::MakeFaultyTransport(transport_, {transfer::FaultSpec::Kind::kFail, 2});
  int calls = 0;
  internal::TransportFactory factory =
      [&](const std::string&) -> Result<std::shared_ptr<transfer::Transport>> {
    return ++calls == 1 ? failing : transport_;
  };
  Result<LoadStats> stats = internal::Load(options, dest.view, factory);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
  ASSERT_EQ(stats->attempts.size(), 3u);
  EXPECT_EQ(stats->attempts[0].status.code(), StatusCode::kTimeout);
  EXPECT_EQ(stats->attempts[1].status.code(), StatusCode::kTransferFailed);
  EXPECT_TRUE(stats->attempts[2].status.ok());
  EXPECT_EQ(stats->source, (*good)->endpoint());
}

TEST_F(ServerClientFaultTest, ClientsBeyondTheLimitAreToldBusyAndAllAreEventuallyServed) {
  OwnedModel source(60, seed_, true);
  ServerOptions options = SmallChunks();
  options.max_concurrent_transfers = 1;
  options.busy_retry_hint = 20ms;
  auto server = internal::StartServer(options, source.view, transport_);
  ASSERT_TRUE(server.ok());
  const int kClients = 4;
  std::vector<OwnedModel> dests;
  for (int i = 0; i < kClients; ++i) dests.push_back(source.EmptyLike());
  std::vector<Status> results(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      Result<LoadStats> r =
          internal::Load(ClientFor((*server)->endpoint()), dests[i].view, Inproc(transport_));
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

TEST_F(ServerClientFaultTest, MalformedRequestsAreRejectedAndTheServerKeepsServing) {
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, transport_);
  ASSERT_TRUE(server.ok());
  const std::string endpoint = (*server)->endpoint();

  Result<wire::Envelope> reply = RawExchange(endpoint, "\x12\x34 definitely not protobuf \xff");
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  ASSERT_TRUE(reply->has_reject());
  EXPECT_EQ(reply->reject().code(), wire::PROTOCOL_MISMATCH);

  wire::Envelope future;
  future.mutable_register_();
  future.set_protocol_version(kProtocolVersion + 7);
  reply = RawExchange(endpoint, future.SerializeAsString());
  ASSERT_TRUE(reply.ok() && reply->has_reject());
  EXPECT_NE(
      reply->reject().reason().find("protocol version " + std::to_string(kProtocolVersion + 7)),
      std::string::npos);

  reply = RawExchange(endpoint, std::string(kMaxServerMessageBytes + 10, 'x'));
  ASSERT_TRUE(reply.ok() && reply->has_reject());
  EXPECT_NE(reply->reject().reason().find("exceeds the limit"), std::string::npos);

  wire::Envelope stray;
  stray.mutable_heartbeat()->set_session_id(42);
  reply = RawExchange(endpoint, Encode(stray));
  ASSERT_TRUE(reply.ok() && reply->has_reject());
  EXPECT_NE(reply->reject().reason().find("not active"), std::string::npos);

  OwnedModel dest = source.EmptyLike();
  Result<LoadStats> stats = internal::Load(ClientFor(endpoint), dest.view, Inproc(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
}

// A ghost client (RegisterRaw, then nothing) takes a one-slot server's only slot. A real client
// arriving next is told Busy, and must be served within `within`: one of `options`' deadlines
// has to free the slot, and the ghost counts as one failed client.
void ExpectTheGhostsSlotIsFreedWithin(ServerOptions options, std::chrono::seconds within,
                                      uint64_t seed,
                                      const std::shared_ptr<transfer::Transport>& transport) {
  OwnedModel source(10, seed, true);
  options.max_concurrent_transfers = 1;
  auto server = internal::StartServer(options, source.view, transport);
  ASSERT_TRUE(server.ok());
  Result<wire::Envelope> reply = RegisterRaw((*server)->endpoint(), source.view);
  ASSERT_TRUE(reply.ok() && reply->has_accept()) << "the ghost client takes the only slot";
  OwnedModel dest = source.EmptyLike();
  const auto start = std::chrono::steady_clock::now();
  Result<LoadStats> stats =
      internal::Load(ClientFor((*server)->endpoint()), dest.view, Inproc(transport));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, within);
  EXPECT_TRUE(dest.SameBytes(source));
  EXPECT_EQ((*server)->stats().clients_failed, 1u);
}

TEST_F(ServerClientFaultTest, ClientThatRegistersAndNeverConnectsCostsAtMostTheConnectDeadline) {
  ServerOptions options = SmallChunks();
  options.connect_timeout = 300ms;
  ExpectTheGhostsSlotIsFreedWithin(options, 3s, seed_, transport_);
}

TEST_F(ServerClientFaultTest,
       ClientThatRegistersThenFallsSilentLosesItsSlotAtTheHeartbeatDeadline) {
  ServerOptions options = SmallChunks();
  options.connect_timeout = 60s;  // not what frees the slot
  options.heartbeat_timeout = 500ms;
  ExpectTheGhostsSlotIsFreedWithin(options, 5s, seed_, transport_);
}

TEST_F(ServerClientFaultTest, OnlyAClientHoldingTheSharedSecretLearnsAnything) {
  testing::TempDir tmp;
  OwnedModel source(10, seed_, true);
  ServerOptions server_options = SmallChunks();
  server_options.secret = *LoadOrCreateSecret(tmp / "secret");
  auto server = internal::StartServer(server_options, source.view, transport_);
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
    const auto start = std::chrono::steady_clock::now();
    Result<LoadStats> stats = internal::Load(options, dest.view, Inproc(transport_));
    EXPECT_EQ(stats.status().code(), StatusCode::kPermissionDenied) << c.who;
    EXPECT_NE(stats.status().message().find(c.reason), std::string::npos)
        << c.who << ": " << stats.status().message();
    EXPECT_LT(std::chrono::steady_clock::now() - start, 3s) << c.who << ": fails at once";
    EXPECT_TRUE(dest.SameBytes(source.EmptyLike())) << c.who << ": nothing was sent";
  }
  for (int i = 0; i < 100 && (*server)->stats().unauthenticated < 2; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_GE((*server)->stats().unauthenticated, 2u);
  EXPECT_EQ((*server)->stats().refused, 0u) << "no Register ever reached the server";

  ClientOptions options = ClientFor((*server)->endpoint());
  options.secret = server_options.secret;
  Result<LoadStats> stats = internal::Load(options, dest.view, Inproc(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
}

TEST_F(ServerClientFaultTest, AClientWithASecretRefusesASourceThatRunsWithout) {
  testing::TempDir tmp;
  OwnedModel source(10, seed_, true);
  auto server = internal::StartServer(SmallChunks(), source.view, transport_);
  ASSERT_TRUE(server.ok());
  OwnedModel dest = source.EmptyLike();
  ClientOptions options = ClientFor((*server)->endpoint());
  options.secret = *LoadOrCreateSecret(tmp / "secret");
  Result<LoadStats> stats = internal::Load(options, dest.view, Inproc(transport_));
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
  auto server = internal::StartServer(options, source.view, transport_);
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
  const auto start = std::chrono::steady_clock::now();
  Result<LoadStats> stats = internal::Load(client, dest.view, Inproc(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_TRUE(dest.SameBytes(source));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  const auto stopping = std::chrono::steady_clock::now();
  (*server)->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - stopping, 2s);
  for (int fd : mute) close(fd);
}

TEST_F(ServerClientFaultTest, StopReturnsPromptlyWhileAClientIsExpected) {
  OwnedModel source(10, seed_, true);
  ServerOptions options = SmallChunks();
  options.connect_timeout = 60s;
  auto server = internal::StartServer(options, source.view, transport_);
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE(RegisterRaw((*server)->endpoint(), source.view).ok());
  const auto start = std::chrono::steady_clock::now();
  (*server)->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

TEST(ServerOptionsTest, BadOptionsAreRefusedNamingTheOption) {
  OwnedModel source(3, 1, true);
  ServerOptions options;
  options.chunk_bytes = 10;
  auto server = internal::StartServer(options, source.view, transfer::MakeInprocTransport());
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("chunk_bytes"), std::string::npos);
  options = ServerOptions();
  options.partition.tp_rank = 2;
  server = internal::StartServer(options, source.view, transfer::MakeInprocTransport());
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("tp_rank 2"), std::string::npos);
  options = ServerOptions();
  options.secret = "not a secret";
  server = internal::StartServer(options, source.view, transfer::MakeInprocTransport());
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("ServerOptions::secret"), std::string::npos);
  options = ServerOptions();
  options.listen = "tcp://not-an-address:99999";
  server = internal::StartServer(options, source.view, transfer::MakeInprocTransport());
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace netloader
