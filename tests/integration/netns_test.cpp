// Several hosts, simulated honestly: each "host" is a network namespace on a bridge whose one
// NIC is capped by tc tbf in both directions (scripts/netns-hosts.sh). Servers and clients run
// inside them as separate processes, over real ZeroMQ and real MPI through the capped links,
// with the shared rendezvous on the bridge (or, with --mpi-helpers, none). Needs root
// (CAP_NET_ADMIN): skipped, saying so, where namespaces cannot be made.

#include <gtest/gtest.h>
#include <signal.h>

#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "netloader/safetensors.h"
#include "tests/support/same_checkpoint.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::Hosts;
using testing::TempDir;

std::string Bin(const std::string& name) { return testing::BinDir() + "/" + name; }

constexpr int kSourceMbit = 200;  // each source host's NIC
const char* const kClientRate = "1gbit";

// Hosts 0 and 1 are sources (kSourceMbit each), host 2 the client (kClientRate); the rendezvous
// runs on the bridge. A server on host i serves `model` at <address>:7000.
class NetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    hosts_ = std::make_unique<Hosts>(std::vector<std::string>{
        std::to_string(kSourceMbit) + "mbit", std::to_string(kSourceMbit) + "mbit", kClientRate});
    if (!hosts_->ok()) GTEST_SKIP() << "network namespaces cannot be made here: " << hosts_->why();
    rendezvous_ = std::make_unique<testing::Rendezvous>(tmp_, hosts_->bridge());
    ASSERT_TRUE(rendezvous_->ready()) << rendezvous_->child().Stderr();
    Child gen({Bin("netloader-make-checkpoint"), "--output", tmp_ / "model", "--tensors", "60",
               "--size-mib", "96", "--seed", "53"},
              tmp_ / "gen");
    ASSERT_EQ(gen.Wait(60s), 0) << gen.Stderr();
  }

  // Starts a server on `host` and waits until it listens.
  Child& Serve(int host, std::vector<std::string> extra = {}) {
    const std::string endpoint = Endpoint(host);
    std::vector<std::string> argv = {Bin("netloader-server"),
                                     "--model",
                                     tmp_ / "model",
                                     "--listen",
                                     endpoint,
                                     "--chunk-mib",
                                     "1",
                                     "--rendezvous",
                                     rendezvous_->spec(),
                                     "--interface",
                                     "nlv",
                                     "--endpoint-file",
                                     tmp_ / ("endpoint" + std::to_string(host))};
    argv.insert(argv.end(), extra.begin(), extra.end());
    servers_.push_back(
        std::make_unique<Child>(hosts_->On(host, argv), tmp_ / ("server" + std::to_string(host))));
    EXPECT_FALSE(testing::WaitForLine(tmp_ / ("endpoint" + std::to_string(host)), 30s).empty())
        << servers_.back()->Stderr();
    return *servers_.back();
  }
  std::string Endpoint(int host) const { return "tcp://" + hosts_->address(host) + ":7000"; }

  // netloader-client on `host` (the client host, 2, by default) with `args`.
  std::vector<std::string> Client(std::vector<std::string> args, int host = 2) const {
    std::vector<std::string> argv = {
        Bin("netloader-client"), "--model",     tmp_ / "model", "--rendezvous",
        rendezvous_->spec(),     "--interface", "nlv",          "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    return hosts_->On(host, argv);
  }
  nlohmann::json Run(const std::string& name, std::vector<std::string> args) {
    Child client(Client(std::move(args)), tmp_ / name);
    EXPECT_EQ(client.Wait(120s), 0) << client.Stderr();
    std::vector<nlohmann::json> lines = testing::JsonLines(client.Stdout());
    return lines.empty() ? nlohmann::json(nullptr) : lines.back();
  }

  // Once `client` holds its load (--testing-hold-at, hold file tmp_/go), sends `source`
  // `signal`, lets the client go, and returns its summary line after it succeeded.
  nlohmann::json FailSourceWhileHeld(Child& client, Child& source, int signal) {
    EXPECT_TRUE(testing::WaitFor(
        [&] { return client.Stderr().find("holding the load") != std::string::npos; }, 60s))
        << client.Stderr() << source.Stderr();
    source.Signal(signal);
    testing::WriteFile(tmp_ / "go", "");
    EXPECT_EQ(client.Wait(120s), 0) << client.Stderr();
    std::vector<nlohmann::json> lines = testing::JsonLines(client.Stdout());
    EXPECT_FALSE(lines.empty()) << client.Stdout();
    return lines.empty() ? nlohmann::json::object() : lines.back();
  }

  // The servers stop before the hosts go.
  void TearDown() override { servers_.clear(); }

  TempDir tmp_;
  std::unique_ptr<Hosts> hosts_;
  std::unique_ptr<testing::Rendezvous> rendezvous_;
  std::vector<std::unique_ptr<Child>> servers_;
};

// One capped source, then two striped: the load across hosts is byte-identical, each source's
// link runs near its cap, and two sources take about half the time of one.
TEST_F(NetnsTest, ALoadAcrossHostsIsByteIdenticalAndStripingTwoCappedSourcesHalvesItsTime) {
  Serve(0);
  Serve(1);
  const nlohmann::json one = Run("one", {"--source", Endpoint(0), "--output", tmp_ / "out"});
  ASSERT_TRUE(one.is_object() && one["ok"] == true) << one.dump();
  testing::ExpectSameCheckpoint(tmp_ / "model", tmp_ / "out");
  const double cap = kSourceMbit * 1e6 / 8;  // bytes per second
  const double one_rate = one["bytes"].get<double>() / one["transfer_seconds"].get<double>();
  EXPECT_GT(one_rate, 0.8 * cap) << "the capped link should be the limit: " << one.dump();
  EXPECT_LT(one_rate, 1.05 * cap) << "the cap must hold: " << one.dump();

  const nlohmann::json two = Run(
      "two", {"--source", Endpoint(0), "--source", Endpoint(1), "--stripe", "2", "--verify-only"});
  ASSERT_TRUE(two.is_object() && two["ok"] == true) << two.dump();
  ASSERT_EQ(two["attempts"].size(), 2u);
  EXPECT_GT(two["attempts"][0]["bytes"].get<uint64_t>(), 0u);
  EXPECT_GT(two["attempts"][1]["bytes"].get<uint64_t>(), 0u);
  const double speedup = one["load_seconds"].get<double>() / two["load_seconds"].get<double>();
  std::printf("one source %.2f s, two striped %.2f s: %.2fx\n", one["load_seconds"].get<double>(),
              two["load_seconds"].get<double>(), speedup);
  EXPECT_GE(speedup, 1.8) << one.dump() << "\n" << two.dump();
}

// Resume across hosts: the first source is killed at half the load; the second sends the rest.
TEST_F(NetnsTest, ALoadAcrossHostsResumesFromTheSecondSourceWhenTheFirstIsKilled) {
  Child& first = Serve(0);
  Serve(1);
  const int window = 2;
  Child client(
      Client({"--source", Endpoint(0), "--source", Endpoint(1), "--output", tmp_ / "out",
              "--window", std::to_string(window), "--stall-timeout", "5", "--heartbeat-timeout",
              "2", "--testing-hold-at", "50", "--testing-hold-file", tmp_ / "go"}),
      tmp_ / "client");
  const nlohmann::json summary = FailSourceWhileHeld(client, first, SIGKILL);
  ASSERT_FALSE(HasFailure());
  const uint64_t bytes = summary["bytes"];
  ASSERT_EQ(summary["attempts"].size(), 2u) << summary.dump();
  EXPECT_NE(summary["attempts"][0]["status"], "OK");
  EXPECT_GE(summary["attempts"][0]["bytes"].get<uint64_t>(), bytes / 2);
  EXPECT_EQ(summary["attempts"][0]["bytes"].get<uint64_t>() +
                summary["attempts"][1]["bytes"].get<uint64_t>(),
            bytes);
  EXPECT_LE(summary["bytes_received"].get<uint64_t>(), bytes + window * (1u << 20))
      << summary.dump();
  testing::ExpectSameCheckpoint(tmp_ / "model", tmp_ / "out");
}

// Relay fan-out across hosts, and a relay that fails: host 1 loads from the seed on host 0 and
// serves while it loads; host 2, configured with the seed only, is redirected to host 1 and
// receives from it while host 1 is still loading. Host 1 is then killed (SIGKILL) or frozen
// (SIGSTOP) mid-load; host 2 resumes from the seed where it stopped, never restarting, and ends
// byte-identical within its deadlines.
class NetnsFaultTest : public NetnsTest {  // labelled netns-fault: the fault matrix
 protected:
  void RelayFailsMidLoad(int signal) {
    Serve(0, {"--fanout", "1", "--heartbeat-timeout", "2"});
    const std::string relay_endpoint = Endpoint(1);
    Child relay(Client({"--source", Endpoint(0), "--serve", relay_endpoint, "--verify-only",
                        "--heartbeat-timeout", "2", "--testing-hold-at", "50",
                        "--testing-hold-file", tmp_ / "never"},
                       1),
                tmp_ / "relay");
    ASSERT_TRUE(testing::WaitFor(
        [&] { return relay.Stderr().find("holding the load") != std::string::npos; }, 60s))
        << relay.Stderr();
    // The relay is held at half: the client gets the first quarter from it, then holds too. A
    // frozen relay answers no Register either: the client gives up on one within 3 s.
    Child client(Client({"--source", Endpoint(0), "--output", tmp_ / "out", "--window", "2",
                         "--stall-timeout", "5", "--heartbeat-timeout", "2", "--register-timeout",
                         "3", "--testing-hold-at", "25", "--testing-hold-file", tmp_ / "go"}),
                 tmp_ / "client");
    const nlohmann::json summary = FailSourceWhileHeld(client, relay, signal);
    ASSERT_FALSE(HasFailure());
    const uint64_t bytes = summary["bytes"];
    const nlohmann::json& attempts = summary["attempts"];
    ASSERT_GE(attempts.size(), 3u) << summary.dump();
    EXPECT_EQ(attempts[0]["source"], Endpoint(0));
    EXPECT_NE(attempts[0]["status"].get<std::string>().find("redirected"), std::string::npos)
        << summary.dump();
    EXPECT_EQ(attempts[1]["source"], relay_endpoint);
    EXPECT_NE(attempts[1]["status"], "OK");
    const uint64_t from_relay = attempts[1]["bytes"];
    EXPECT_GE(from_relay, bytes / 4) << "the relay served its quarter while it was loading";
    EXPECT_LT(from_relay, bytes / 2 + (4u << 20)) << "a relay sends only what it verified";
    // Every other attempt was a redirect, the dead relay again, or the seed, which sent the rest.
    uint64_t delivered = 0;
    for (const nlohmann::json& a : attempts) delivered += a["bytes"].get<uint64_t>();
    EXPECT_EQ(delivered, bytes) << "resumed, not restarted: " << summary.dump();
    EXPECT_EQ(summary["source"], Endpoint(0));
    EXPECT_LE(summary["bytes_received"].get<uint64_t>(), bytes + 2 * (1u << 20)) << summary.dump();
    testing::ExpectSameCheckpoint(tmp_ / "model", tmp_ / "out");
  }
};

TEST_F(NetnsFaultTest, AClientBehindARelayThatDiesMidLoadResumesFromTheSeed) {
  RelayFailsMidLoad(SIGKILL);
}

TEST_F(NetnsFaultTest, AClientBehindARelayThatFreezesMidLoadResumesFromTheSeed) {
  RelayFailsMidLoad(SIGSTOP);
}

// A burst across five hosts with no shared rendezvous: every process runs its MPI in helpers,
// each server on a private rendezvous (--mpi-helpers). A seed with --fanout 1 on a capped host,
// and four instances configured with the seed only, each serving while it loads (K = 4
// relays). The first is held at a quarter until the seed has redirected the other three, so
// that they start while it loads (events, not timing). Every instance ends byte-identical and
// the seed sends about one copy.
TEST(NetnsBurstTest, FourRelaysWithNoSharedRendezvousGetEveryByteAndTheSeedSendsAboutOneCopy) {
  constexpr int kRelays = 4;
  TempDir tmp;
  Hosts hosts({"200mbit", "1gbit", "1gbit", "1gbit", "1gbit"});
  if (!hosts.ok()) GTEST_SKIP() << "network namespaces cannot be made here: " << hosts.why();
  Child gen({Bin("netloader-make-checkpoint"), "--output", tmp / "model", "--tensors", "40",
             "--size-mib", "48", "--seed", "67"},
            tmp / "gen");
  ASSERT_EQ(gen.Wait(60s), 0) << gen.Stderr();
  auto endpoint = [&](int host) { return "tcp://" + hosts.address(host) + ":7000"; };
  Child seed(hosts.On(0, {Bin("netloader-server"), "--model", tmp / "model", "--listen",
                          endpoint(0), "--chunk-mib", "1", "--fanout", "1", "--interface", "nlv",
                          "--mpi-helpers", "--endpoint-file", tmp / "endpoint0"}),
             tmp / "seed");
  ASSERT_FALSE(testing::WaitForLine(tmp / "endpoint0", 30s).empty()) << seed.Stderr();
  auto status = [&]() {
    Child query(hosts.On(1, {Bin("netloader-client"), "--status", endpoint(0), "--json"}),
                tmp / "status");
    const int code = query.Wait(30s);
    std::vector<nlohmann::json> lines = testing::JsonLines(query.Stdout());
    return code == 0 && !lines.empty() ? lines.back() : nlohmann::json::object();
  };
  std::vector<std::unique_ptr<Child>> relays;
  auto start_relay = [&](int host, std::vector<std::string> extra) {
    std::vector<std::string> argv = {Bin("netloader-client"),
                                     "--model",
                                     tmp / "model",
                                     "--source",
                                     endpoint(0),
                                     "--serve",
                                     endpoint(host),
                                     "--output",
                                     tmp / ("out" + std::to_string(host)),
                                     "--interface",
                                     "nlv",
                                     "--mpi-helpers",
                                     "--json"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    relays.push_back(
        std::make_unique<Child>(hosts.On(host, argv), tmp / ("relay" + std::to_string(host))));
  };
  start_relay(1, {"--testing-hold-at", "25", "--testing-hold-file", tmp / "go"});
  ASSERT_TRUE(testing::WaitFor(
      [&] { return relays[0]->Stderr().find("holding the load") != std::string::npos; }, 60s))
      << relays[0]->Stderr();
  for (int host = 2; host <= kRelays; ++host) start_relay(host, {});
  nlohmann::json at_seed;
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        at_seed = status();
        return at_seed.value("redirected", 0) >= kRelays - 1;
      },
      60s))
      << "the seed, at its fan-out, sends the others on: " << at_seed.dump();
  testing::WriteFile(tmp / "go", "");
  // A relay prints its summary once its own load is verified, then serves until stopped.
  uint64_t bytes = 0;  // the model's
  for (int i = 0; i < kRelays; ++i) {
    Child& relay = *relays[i];
    nlohmann::json summary;
    EXPECT_TRUE(testing::WaitFor(
        [&] {
          for (const nlohmann::json& line : testing::JsonLines(relay.Stdout())) {
            if (line.contains("ok")) summary = line;
          }
          return !summary.is_null() || !relay.Running();
        },
        120s));
    EXPECT_EQ(summary.value("ok", false), true) << relay.Stdout() << relay.Stderr();
    bytes = std::max(bytes, summary.value("bytes", uint64_t{0}));
    testing::ExpectSameCheckpoint(tmp / "model", tmp / ("out" + std::to_string(i + 1)));
  }
  at_seed = status();
  ASSERT_GT(bytes, 0u);
  EXPECT_GE(at_seed.value("bytes_sent", uint64_t{0}), bytes) << at_seed.dump();
  EXPECT_LE(at_seed.value("bytes_sent", uint64_t{0}), bytes + bytes / 10)
      << "the seed sent about one copy for " << kRelays << " instances: " << at_seed.dump();
  for (auto& relay : relays) {
    relay->Signal(SIGTERM);
    EXPECT_EQ(relay->Wait(60s), 0) << relay->Stderr();
  }
  seed.Signal(SIGTERM);
  EXPECT_EQ(seed.Wait(60s), 0) << seed.Stderr();
}

}  // namespace
}  // namespace netloader
