// Serve while loading and relay fan-out, in one process: real ZeroMQ sockets on 127.0.0.1, the
// in-process data plane standing in for MPI. Each instance's load is held at half way (in its
// progress callback) until what the test wants to see has happened, so that "while loading" is
// shown by events, not by timing. Real processes in network namespaces: netns_test.cpp.

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <zmq.hpp>

#include "client/client_internal.h"
#include "netloader/fingerprint.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/src/stream/chunk_stream.h"
#include "server/server_internal.h"
#include "tests/support/fault_transport.h"
#include "tests/support/inproc_model.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

// A one-shot event a thread can wait for, for at most a bound.
class Event {
 public:
  void Set() {
    std::lock_guard<std::mutex> lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  // True once set; false if `timeout` passed first.
  bool Wait(std::chrono::milliseconds timeout = 20s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Deadlines long enough that an instance held at half way by the test never trips them (the
// events it waits for bound each hold at 20 s).
ServerOptions Patient(ServerOptions o = SmallChunks()) {
  o.stall_timeout = 60s;
  o.done_timeout = 60s;
  o.transport.rendezvous_uri = "inproc";  // a relay needs a rendezvous shared by everyone
  return o;
}
ClientOptions PatientClient(std::vector<std::string> sources) {
  ClientOptions o = ClientFor(sources[0]);
  o.sources = std::move(sources);
  o.stall_timeout = 60s;
  return o;
}

// A progress callback that, the first time half the bytes are verified, sets `paused` and holds
// the load until `release` is set (or 20 s passed: `held_too_long` then says so).
ProgressCallback HoldAtHalf(Event& paused, Event& release, std::atomic<bool>& held_too_long) {
  auto held = std::make_shared<bool>(false);
  return [&, held](uint64_t done, uint64_t total) {
    if (*held || done < total / 2) return;
    *held = true;
    paused.Set();
    if (!release.Wait()) held_too_long = true;
  };
}

// Sets `event` at the first progress.
ProgressCallback SetAtFirstChunk(Event& event) {
  return [&event](uint64_t, uint64_t) { event.Set(); };
}

// Waits until `server` counted `served` clients, and returns its stats.
ServerStats StatsOnceServed(Server& server, uint64_t served) {
  testing::WaitFor(
      [&] { return server.stats().clients_served + server.stats().clients_failed >= served; }, 10s);
  return server.stats();
}

class RelayTest : public InprocTest {
 protected:
  // A seed serving `source`, and a relay over an empty copy of it (`relayed`).
  void StartSeedAndRelay(const OwnedModel& source) {
    auto seed = internal::StartServer(Patient(), source.view, Plane(transport_));
    ASSERT_TRUE(seed.ok()) << seed.status().ToString();
    seed_server = std::move(*seed);
    relayed.emplace(source.EmptyLike());
    auto started = internal::StartServer(Patient(), relayed->view, Plane(transport_), true);
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    relay = std::move(*started);
  }
  // The relay's own load from the seed, on a thread, through `plane` (default: the in-process
  // one), held at half way until `release` is set; returns once it is held.
  void LoadRelayHeldAtHalf(Event& release, std::shared_ptr<transfer::Transport> plane = nullptr) {
    loading = std::thread([this, &release, plane] {
      ClientOptions options = PatientClient({seed_server->endpoint()});
      options.relay = relay.get();
      options.progress = HoldAtHalf(paused, release, held_too_long);
      relay_load = internal::Load(options, relayed->view, *Plane(plane ? plane : transport_));
    });
    ASSERT_TRUE(paused.Wait()) << "the relay's load never reached half way";
  }
  void TearDown() override {
    if (loading.joinable()) loading.join();  // the hold lets go within 20 s
  }

  std::unique_ptr<Server> seed_server, relay;
  std::optional<OwnedModel> relayed;
  Event paused;
  std::atomic<bool> held_too_long{false};
  Result<LoadStats> relay_load = Status(StatusCode::kInternal, "not run");
  std::thread loading;
};
class RelayFaultTest : public RelayTest {};

TEST_F(RelayTest, ARelayServesWhatItVerifiedWhileItIsStillLoading) {
  OwnedModel source(120, seed_, true);
  ASSERT_NO_FATAL_FAILURE(StartSeedAndRelay(source));

  // Before its own load has a source, a relay has nothing to serve: Busy, saying why.
  OwnedModel early = source.EmptyLike();
  ClientOptions impatient = ClientFor(relay->endpoint());
  impatient.busy_timeout = 300ms;
  Result<LoadStats> refused = internal::Load(impatient, early.view, *Plane(transport_));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kBusy) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("it is still loading and cannot serve yet"),
            std::string::npos)
      << "free slots are not the reason: " << refused.status().message();

  Event downstream_started;
  ASSERT_NO_FATAL_FAILURE(LoadRelayHeldAtHalf(downstream_started));
  // Asked, each says what it is doing: the seed streams to the relay, its child; the relay
  // holds half.
  const uint64_t total = source.view.total_bytes();
  Result<SourceStatus> at_seed = QueryStatus(seed_server->endpoint(), "");
  ASSERT_TRUE(at_seed.ok()) << at_seed.status().ToString();
  EXPECT_EQ(at_seed->state, "serving");
  EXPECT_EQ(at_seed->bytes_held, total);
  EXPECT_EQ(at_seed->sessions, 1);
  EXPECT_EQ(at_seed->children, std::vector<std::string>{relay->endpoint()});
  Result<SourceStatus> at_relay = QueryStatus(relay->endpoint(), "");
  ASSERT_TRUE(at_relay.ok()) << at_relay.status().ToString();
  EXPECT_EQ(at_relay->state, "loading");
  EXPECT_GE(at_relay->bytes_held, total / 2);
  EXPECT_LT(at_relay->bytes_held, total);
  EXPECT_EQ(at_relay->bytes_total, total);
  EXPECT_EQ(at_relay->table_digest, TableDigest(source.view));

  // The relay's load is held at half; a client of the relay gets chunks meanwhile.
  OwnedModel b = source.EmptyLike();
  ClientOptions downstream = PatientClient({relay->endpoint()});
  downstream.progress = SetAtFirstChunk(downstream_started);
  Result<LoadStats> loaded = internal::Load(downstream, b.view, *Plane(transport_));
  loading.join();

  ASSERT_TRUE(relay_load.ok()) << relay_load.status().ToString();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_FALSE(held_too_long) << "no chunk reached the client while the relay was loading";
  EXPECT_TRUE(relayed->SameBytes(source));
  EXPECT_TRUE(b.SameBytes(source));
  EXPECT_EQ(loaded->source, relay->endpoint());
  EXPECT_TRUE(VerifyModel(b.view, *loaded).ok());
  // One copy left the seed; the relay forwarded one.
  EXPECT_EQ(StatsOnceServed(*seed_server, 1).bytes_sent, source.view.total_bytes());
  EXPECT_EQ(StatsOnceServed(*relay, 1).bytes_sent, source.view.total_bytes());

  // Loaded, the relay is a source like any other.
  at_relay = QueryStatus(relay->endpoint(), "");
  ASSERT_TRUE(at_relay.ok());
  EXPECT_EQ(at_relay->state, "serving");
  EXPECT_EQ(at_relay->bytes_held, total);
  EXPECT_EQ(at_relay->bytes_sent, total);
  EXPECT_EQ(at_relay->clients_served, 1u);
  OwnedModel c = source.EmptyLike();
  ASSERT_TRUE(internal::Load(ClientFor(relay->endpoint()), c.view, *Plane(transport_)).ok());
  EXPECT_TRUE(c.SameBytes(source));
}

TEST_F(RelayTest, WithFanOutOneABurstFormsAChainAndTheSeedSendsOneCopy) {
  OwnedModel source(120, seed_, true);
  ServerOptions seed_options = Patient();
  seed_options.fanout = 1;
  auto seed = internal::StartServer(seed_options, source.view, Plane(transport_));
  ASSERT_TRUE(seed.ok()) << seed.status().ToString();
  OwnedModel a = source.EmptyLike(), b = source.EmptyLike(), c = source.EmptyLike();
  auto relay_a = internal::StartServer(seed_options, a.view, Plane(transport_), true);
  auto relay_b = internal::StartServer(seed_options, b.view, Plane(transport_), true);
  ASSERT_TRUE(relay_a.ok() && relay_b.ok());

  // A loads from the seed and is held at half until C, at the end of the chain, has chunks.
  Event a_paused, b_started, c_started;
  Result<LoadStats> loaded_a = Status(StatusCode::kInternal, "not run");
  Result<LoadStats> loaded_b = loaded_a;
  std::thread thread_a([&] {
    ClientOptions options = PatientClient({(*seed)->endpoint()});
    options.relay = relay_a->get();
    options.progress = HoldAtHalf(a_paused, c_started, held_too_long);
    loaded_a = internal::Load(options, a.view, *Plane(transport_));
  });
  ASSERT_TRUE(a_paused.Wait());
  // B is configured with the seed only: the seed, at its limit, sends it to A.
  std::thread thread_b([&] {
    ClientOptions options = PatientClient({(*seed)->endpoint()});
    options.relay = relay_b->get();
    options.progress = SetAtFirstChunk(b_started);
    loaded_b = internal::Load(options, b.view, *Plane(transport_));
  });
  ASSERT_TRUE(b_started.Wait());
  // C, configured with the seed only too, is sent to A, which sends it on to B.
  ClientOptions options_c = PatientClient({(*seed)->endpoint()});
  options_c.progress = SetAtFirstChunk(c_started);
  Result<LoadStats> loaded_c = internal::Load(options_c, c.view, *Plane(transport_));
  thread_a.join();
  thread_b.join();

  for (const Result<LoadStats>* r : {&loaded_a, &loaded_b, &loaded_c}) {
    ASSERT_TRUE(r->ok()) << r->status().ToString();
  }
  EXPECT_FALSE(held_too_long) << "C got nothing while A, two hops up, was loading";
  for (const OwnedModel* m : {&a, &b, &c}) EXPECT_TRUE(m->SameBytes(source));
  EXPECT_TRUE(VerifyModel(c.view, *loaded_c).ok());

  ASSERT_EQ(loaded_b->attempts.size(), 2u);
  EXPECT_EQ(loaded_b->attempts[0].source, (*seed)->endpoint());
  EXPECT_NE(loaded_b->attempts[0].status.message().find("redirected"), std::string::npos)
      << loaded_b->attempts[0].status.ToString();
  EXPECT_EQ(loaded_b->source, (*relay_a)->endpoint());
  ASSERT_EQ(loaded_c->attempts.size(), 3u);
  EXPECT_EQ(loaded_c->attempts[1].source, (*relay_a)->endpoint());
  EXPECT_EQ(loaded_c->source, (*relay_b)->endpoint());

  const uint64_t model = source.view.total_bytes();
  const ServerStats at_seed = StatsOnceServed(**seed, 1);
  EXPECT_EQ(at_seed.bytes_sent, model) << "the seed sent one copy for three instances";
  EXPECT_EQ(at_seed.redirected, 2u);
  EXPECT_EQ(StatsOnceServed(**relay_a, 1).bytes_sent, model);
  EXPECT_EQ(StatsOnceServed(**relay_a, 1).redirected, 1u);
  EXPECT_EQ(StatsOnceServed(**relay_b, 1).bytes_sent, model);
}

// A relay whose own load fails: its client resumes from the next holder (the seed) where it
// stopped, never restarting; the relay refuses newcomers, naming why; and once its host loaded
// the weights otherwise (from disk) and says so, it serves again.
TEST_F(RelayFaultTest,
       ClientsOfARelayWhoseLoadFailsResumeFromTheSeedAndItServesOnceLoadedFromDisk) {
  OwnedModel source(120, seed_, true);
  ASSERT_NO_FATAL_FAILURE(StartSeedAndRelay(source));
  const size_t chunks = ChunkPlan::Make(TensorSizes(source.view), SmallChunks().chunk_bytes).size();

  // The relay's only source breaks at three quarters, after the hold at half.
  Event downstream_started;
  ASSERT_NO_FATAL_FAILURE(LoadRelayHeldAtHalf(
      downstream_started, transfer::MakeFaultyTransport(
                              transport_, {transfer::FaultSpec::Kind::kFail, chunks * 3 / 4})));

  OwnedModel b = source.EmptyLike();
  ClientOptions downstream = PatientClient({relay->endpoint(), seed_server->endpoint()});
  downstream.progress = SetAtFirstChunk(downstream_started);
  Result<LoadStats> loaded = internal::Load(downstream, b.view, *Plane(transport_));
  loading.join();

  ASSERT_FALSE(relay_load.ok()) << "the relay's source was to break";
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_FALSE(held_too_long);
  EXPECT_TRUE(b.SameBytes(source));
  EXPECT_TRUE(VerifyModel(b.view, *loaded).ok());
  ASSERT_EQ(loaded->attempts.size(), 2u);
  const SourceAttempt& at_relay = loaded->attempts[0];
  EXPECT_EQ(at_relay.source, relay->endpoint());
  EXPECT_FALSE(at_relay.status.ok());
  EXPECT_GT(at_relay.bytes, 0u) << "the relay served nothing while it was loading";
  EXPECT_LT(at_relay.bytes, source.view.total_bytes());
  // Resumed, not restarted: the seed sent only what the relay had not.
  EXPECT_EQ(loaded->attempts[1].bytes, source.view.total_bytes() - at_relay.bytes);

  Result<SourceStatus> failed = QueryStatus(relay->endpoint(), "");
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->state, "failed");
  EXPECT_NE(failed->failure.find("injected failure"), std::string::npos) << failed->failure;
  // Newcomers are refused at once, told why.
  OwnedModel c = source.EmptyLike();
  Result<LoadStats> refused =
      internal::Load(ClientFor(relay->endpoint()), c.view, *Plane(transport_));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("own load failed"), std::string::npos)
      << refused.status().ToString();

  // The host loads the weights from disk (here: copies them) and says so; the relay serves.
  for (size_t i = 0; i < relayed->storage.size(); ++i) {
    std::copy(source.storage[i].begin(), source.storage[i].end(), relayed->storage[i].begin());
  }
  ASSERT_TRUE(relay->MarkLoaded().ok());
  Result<LoadStats> served =
      internal::Load(ClientFor(relay->endpoint()), c.view, *Plane(transport_));
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  EXPECT_TRUE(c.SameBytes(source));
}

// ClientOptions::cancel, set while the client waits on a relay for chunks the relay does not
// hold yet: the load ends with Cancelled, without waiting out a deadline, and no further source
// is tried (the seed, listed next, serves nobody but the relay).
// A relay serves its source's stream, whatever its own chunk_bytes; a partial load from it once
// it is loaded is cut at that stream's chunk size too, as its manifest is.
TEST_F(RelayTest, APartialLoadFromALoadedRelayIsCutAtItsSourcesChunkSize) {
  OwnedModel source(40, seed_, true);
  auto seed = internal::StartServer(Patient(), source.view, Plane(transport_));  // 64 KiB chunks
  ASSERT_TRUE(seed.ok()) << seed.status().ToString();
  seed_server = std::move(*seed);
  ServerOptions relay_options = Patient();
  relay_options.chunk_bytes = 256 << 10;
  relayed.emplace(source.EmptyLike());
  auto started = internal::StartServer(relay_options, relayed->view, Plane(transport_), true);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  relay = std::move(*started);
  ClientOptions whole = PatientClient({seed_server->endpoint()});
  whole.relay = relay.get();
  Result<LoadStats> relay_loaded = internal::Load(whole, relayed->view, *Plane(transport_));
  ASSERT_TRUE(relay_loaded.ok()) << relay_loaded.status().ToString();

  OwnedModel dest = source.EmptyLike();
  ClientOptions partial = PatientClient({relay->endpoint()});
  partial.tensors = {"layer.1*"};
  Result<LoadStats> stats = internal::Load(partial, dest.view, *Plane(transport_));
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  size_t selected = 0;
  for (size_t i = 0; i < source.storage.size(); ++i) {
    if (!TensorPatternMatches("layer.1*", source.view.tensors[i].name)) continue;
    ++selected;
    EXPECT_EQ(dest.storage[i], source.storage[i]) << source.view.tensors[i].name;
  }
  EXPECT_EQ(stats->tensors, selected);
}

TEST_F(RelayTest, ACancelledLoadEndsAtOnceAndTriesNoFurtherSource) {
  OwnedModel source(120, seed_, true);
  ASSERT_NO_FATAL_FAILURE(StartSeedAndRelay(source));
  Event release;
  ASSERT_NO_FATAL_FAILURE(LoadRelayHeldAtHalf(release));

  // The client gets the relay's first half, then waits for the rest; then it is cancelled.
  OwnedModel b = source.EmptyLike();
  ClientOptions downstream = PatientClient({relay->endpoint(), seed_server->endpoint()});
  std::atomic<bool> cancel{false};
  downstream.cancel = &cancel;
  Event started;
  downstream.progress = SetAtFirstChunk(started);
  Result<LoadStats> cancelled = Status(StatusCode::kInternal, "not run");
  std::thread client([&] { cancelled = internal::Load(downstream, b.view, *Plane(transport_)); });
  const bool got_a_chunk = started.Wait();
  const auto cancelled_at = std::chrono::steady_clock::now();
  cancel = true;
  client.join();
  const auto took = std::chrono::steady_clock::now() - cancelled_at;
  release.Set();
  loading.join();

  ASSERT_TRUE(got_a_chunk) << "the relay served nothing while it was loading";
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.status().code(), StatusCode::kCancelled) << cancelled.status().ToString();
  // Well under the stall deadline (60 s) it would otherwise have waited out.
  EXPECT_LT(took, 30s);
  ASSERT_TRUE(relay_load.ok()) << relay_load.status().ToString();
  const ServerStats at_seed = StatsOnceServed(*seed_server, 1);
  EXPECT_EQ(at_seed.clients_served + at_seed.clients_failed, 1u) << "the seed was tried too";
  EXPECT_EQ(StatsOnceServed(*relay, 1).clients_failed, 1u);

  // A source that stays Busy (a relay with no source yet) is not waited out either.
  OwnedModel c = source.EmptyLike();
  auto sourceless = internal::StartServer(Patient(), c.view, Plane(transport_), true);
  ASSERT_TRUE(sourceless.ok()) << sourceless.status().ToString();
  OwnedModel d = source.EmptyLike();
  ClientOptions waiting = PatientClient({(*sourceless)->endpoint()});
  waiting.busy_timeout = 60s;
  cancel = false;
  waiting.cancel = &cancel;
  Result<LoadStats> busy = Status(StatusCode::kInternal, "not run");
  std::thread busy_client([&] { busy = internal::Load(waiting, d.view, *Plane(transport_)); });
  testing::WaitFor([&] { return (*sourceless)->stats().busy > 0; }, 10s);
  cancel = true;
  busy_client.join();
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.status().code(), StatusCode::kCancelled) << busy.status().ToString();
}

// A broken or hostile source: a ROUTER that answers every Register with the Redirect `answer`
// makes of its own endpoint, and remembers how many redirects each Register said it followed.
class RedirectingSource {
 public:
  explicit RedirectingSource(std::function<wire::Redirect(const std::string& self)> answer)
      : answer_(std::move(answer)) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
    thread_ = std::thread([this] { Loop(); });
  }
  ~RedirectingSource() {
    stop_ = true;
    thread_.join();
  }
  const std::string& endpoint() const { return endpoint_; }
  std::vector<uint32_t> followed() {
    std::lock_guard<std::mutex> lock(mu_);
    return followed_;
  }

 private:
  void Loop() {
    while (!stop_) {
      zmq::pollitem_t item = {static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(20));
      if (!(item.revents & ZMQ_POLLIN)) continue;
      zmq::message_t identity, body;
      (void)socket_.recv(identity);
      (void)socket_.recv(body);
      Result<wire::Envelope> request = Decode(body.data(), body.size(), kMaxServerMessageBytes);
      if (!request.ok() || !request->has_register_()) continue;
      {
        std::lock_guard<std::mutex> lock(mu_);
        followed_.push_back(request->register_().redirects());
      }
      wire::Envelope reply;
      *reply.mutable_redirect() = answer_(endpoint_);
      const std::string bytes = Encode(reply);
      socket_.send(identity, zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(bytes));
    }
  }

  std::function<wire::Redirect(const std::string&)> answer_;
  zmq::context_t context_;
  zmq::socket_t socket_{context_, zmq::socket_type::router};
  std::string endpoint_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<uint32_t> followed_;
  std::thread thread_;
};

TEST_F(RelayFaultTest, AMalformedRedirectIsRefusedAndEndlessRedirectsStopAtTheLimit) {
  OwnedModel dest(10, seed_, false);
  // No source listed: a broken source, named as such.
  RedirectingSource empty([](const std::string&) { return wire::Redirect(); });
  Result<LoadStats> refused =
      internal::Load(ClientFor(empty.endpoint()), dest.view, *Plane(transport_));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kProtocolMismatch) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("redirected to 0 sources"), std::string::npos)
      << refused.status().ToString();

  // A source that redirects to itself for ever: the client follows kMaxRedirects redirects,
  // saying each time how many it followed, and then gives up on it.
  RedirectingSource loop([](const std::string& self) {
    wire::Redirect redirect;
    redirect.add_sources(self);
    return redirect;
  });
  Result<LoadStats> gave_up =
      internal::Load(ClientFor(loop.endpoint()), dest.view, *Plane(transport_));
  ASSERT_FALSE(gave_up.ok());
  EXPECT_EQ(gave_up.status().code(), StatusCode::kUnavailable) << gave_up.status().ToString();
  std::vector<uint32_t> expected(kMaxRedirects + 1);
  for (int i = 0; i <= kMaxRedirects; ++i) expected[i] = static_cast<uint32_t>(i);
  EXPECT_EQ(loop.followed(), expected);
}

}  // namespace
}  // namespace netloader
