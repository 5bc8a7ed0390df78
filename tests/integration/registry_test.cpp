// The registry with a real etcd (Debian's etcd-server, started by the test on free loopback
// ports) and the shipped CLIs as real processes over real ZeroMQ and MPI: servers publish
// themselves, clients find them, and each piece may die (DESIGN.md, "The registry").

#include <gtest/gtest.h>
#include <signal.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "netloader/src/registry/etcd.h"
#include "netloader/src/registry/record.h"
#include "tests/support/same_checkpoint.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::EtcdServer;
using testing::TempDir;

std::string Bin(const std::string& name) { return testing::BinDir() + "/" + name; }

// The records under the registry's prefix that parse, as a client would see them.
std::vector<registry::Record> Listed(const std::string& url) {
  std::vector<registry::Record> out;
  Result<registry::Etcd> etcd = registry::Etcd::Parse(url);
  if (!etcd.ok()) return out;
  auto listed = etcd->Range(etcd->prefix() + "holders/", registry::Clock::now() + 5s);
  if (!listed.ok()) return out;
  for (const registry::KeyValue& kv : *listed) {
    Result<registry::Record> r = registry::FromJson(kv.value);
    if (r.ok()) out.push_back(*r);
  }
  return out;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Child gen({Bin("netloader-make-checkpoint"), "--output", tmp_ / "model", "--tensors", "20",
               "--size-mib", "8", "--seed", "73"},
              tmp_ / "gen");
    ASSERT_EQ(gen.Wait(60s), 0) << gen.Stderr();
  }

  // netloader-server over the model, publishing to `registry`; waits until it listens.
  Child& Serve(const std::string& registry, std::vector<std::string> extra = {}) {
    const std::string file = tmp_ / ("endpoint" + std::to_string(servers_.size()));
    std::vector<std::string> argv = {Bin("netloader-server"),
                                     "--model",
                                     tmp_ / "model",
                                     "--listen",
                                     "tcp://127.0.0.1:0",
                                     "--endpoint-file",
                                     file,
                                     "--registry",
                                     registry,
                                     "--registry-ttl",
                                     "2",
                                     "--model-id",
                                     "org/model@1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    servers_.push_back(
        std::make_unique<Child>(argv, tmp_ / ("server" + std::to_string(servers_.size()))));
    endpoints_.push_back(testing::WaitForLine(file, 30s));
    EXPECT_FALSE(endpoints_.back().empty()) << servers_.back()->Stderr();
    return *servers_.back();
  }

  struct Run {
    int exit_code;
    nlohmann::json summary;
    std::string stderr_text;
  };
  // netloader-client loading the model as `model_id`, with `args`.
  Run Load(const std::string& name, std::vector<std::string> args,
           const std::string& model_id = "org/model@1") {
    std::vector<std::string> argv = {
        Bin("netloader-client"), "--model", tmp_ / "model", "--model-id", model_id, "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    Child client(argv, tmp_ / name);
    Run run{client.Wait(120s), nullptr, client.Stderr()};
    std::vector<nlohmann::json> lines = testing::JsonLines(client.Stdout());
    if (!lines.empty()) run.summary = lines.back();
    return run;
  }

  TempDir tmp_;
  std::vector<std::unique_ptr<Child>> servers_;
  std::vector<std::string> endpoints_;
};

class RegistryFaultTest : public RegistryTest {};  // labelled registry-fault: the fault matrix

// A server publishes itself; a client given only the registry finds it and loads every byte.
TEST_F(RegistryTest, AClientGivenOnlyTheRegistryFindsTheServerAndLoadsByteIdentical) {
  EtcdServer etcd(tmp_);
  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  Serve(etcd.url(), {"--topology", "rack-1"});
  ASSERT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 1; }, 20s));
  const registry::Record record = Listed(etcd.url()).front();
  EXPECT_EQ(record.endpoint, endpoints_[0]);
  EXPECT_EQ(record.state, "ready");
  EXPECT_EQ(record.model_id, "org/model@1");
  EXPECT_EQ(record.topology, "rack-1");
  EXPECT_EQ(record.bytes_held, record.bytes_total);
  EXPECT_GT(record.free_slots, 0);

  Run run = Load("client", {"--registry", etcd.url(), "--output", tmp_ / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["source"], endpoints_[0]) << run.summary.dump();
  testing::ExpectSameCheckpoint(tmp_ / "model", tmp_ / "out");

  // A client of another model finds nobody, and says so.
  Run other = Load("other", {"--registry", etcd.url(), "--verify-only"}, "org/x@2");
  EXPECT_EQ(other.exit_code, 5) << other.stderr_text;
  EXPECT_NE(other.stderr_text.find("lists no holder of model org/x@2"), std::string::npos)
      << other.stderr_text;
}

// A server listening on every interface is refused a registry unless it advertises an address;
// then it is listed, and found, there.
TEST_F(RegistryTest, AServerOnEveryInterfaceIsListedAtTheAddressItAdvertises) {
  EtcdServer etcd(tmp_);
  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  Child refused({Bin("netloader-server"), "--model", tmp_ / "model", "--listen", "tcp://0.0.0.0:0",
                 "--registry", etcd.url()},
                tmp_ / "refused");
  EXPECT_NE(refused.Wait(60s), 0);
  EXPECT_NE(refused.Stderr().find("--advertise"), std::string::npos) << refused.Stderr();
  const std::string file = tmp_ / "advertised-endpoint";
  Child server({Bin("netloader-server"), "--model", tmp_ / "model", "--listen", "tcp://0.0.0.0:0",
                "--advertise", "127.0.0.1", "--registry", etcd.url(), "--model-id", "org/model@1",
                "--endpoint-file", file},
               tmp_ / "advertised");
  const std::string endpoint = testing::WaitForLine(file, 30s);
  ASSERT_EQ(endpoint.rfind("tcp://127.0.0.1:", 0), 0u) << endpoint << server.Stderr();
  ASSERT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 1; }, 20s));
  EXPECT_EQ(Listed(etcd.url()).front().endpoint, endpoint);
  Run run = Load("client", {"--registry", etcd.url(), "--verify-only"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["source"], endpoint);
}

// Two holders: clients prefer the one of their own topology; a stopped holder leaves the
// registry at once (its lease revoked), a frozen one within its lease and back once it thaws
// (a new lease), a killed one within its lease.
TEST_F(RegistryTest, ClientsPreferTheirTopologyAndHoldersThatLeaveDropOut) {
  EtcdServer etcd(tmp_);
  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  Child& a = Serve(etcd.url(), {"--topology", "rack-a"});
  Child& b = Serve(etcd.url(), {"--topology", "rack-b"});
  ASSERT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 2; }, 20s));
  for (int i : {0, 1}) {
    const std::string rack = i == 0 ? "rack-a" : "rack-b";
    Run run =
        Load("client-" + rack, {"--registry", etcd.url(), "--verify-only", "--topology", rack});
    ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
    EXPECT_EQ(run.summary["source"], endpoints_[i]) << rack << ": " << run.summary.dump();
  }

  a.Signal(SIGTERM);
  ASSERT_EQ(a.Wait(30s), 0) << a.Stderr();
  std::vector<registry::Record> left = Listed(etcd.url());
  ASSERT_EQ(left.size(), 1u) << "a stopped server revokes its lease";
  EXPECT_EQ(left[0].endpoint, endpoints_[1]);

  b.Signal(SIGSTOP);
  EXPECT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).empty(); }, 30s))
      << "a frozen holder renews nothing";
  b.Signal(SIGCONT);
  EXPECT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 1; }, 30s))
      << "thawed, it publishes itself again: " << b.Stderr();
  b.Signal(SIGKILL);
  ASSERT_EQ(b.Wait(30s), 128 + SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  EXPECT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).empty(); }, 30s));
  const double gone =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  RecordProperty("killed_holder_gone_seconds", std::to_string(gone));
  Run none = Load("none", {"--registry", etcd.url(), "--verify-only"});
  EXPECT_EQ(none.exit_code, 5) << none.stderr_text;
}

// etcd named by a host name: looked up within each call's deadline. A name that does not resolve
// fails the call within its deadline, naming the host.
TEST_F(RegistryTest, AHostNameInTheUrlIsLookedUpWithinTheDeadline) {
  EtcdServer etcd(tmp_);
  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  const std::string port = etcd.url().substr(etcd.url().rfind(':') + 1);
  Result<registry::Etcd> named = registry::Etcd::Parse("http://localhost:" + port);
  ASSERT_TRUE(named.ok()) << named.status().ToString();
  ASSERT_TRUE(named->Put(named->prefix() + "probe", "1", 0, registry::Clock::now() + 5s).ok());
  auto listed = named->Range(named->prefix() + "probe", registry::Clock::now() + 5s);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed->size(), 1u);

  Result<registry::Etcd> nowhere = registry::Etcd::Parse("http://no-such-host.invalid:2379");
  ASSERT_TRUE(nowhere.ok());
  const auto start = std::chrono::steady_clock::now();
  auto failed = nowhere->Range(nowhere->prefix(), registry::Clock::now() + 2s);
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("no-such-host.invalid"), std::string::npos)
      << failed.status().ToString();
  EXPECT_LT(took, 4.5) << "the lookup outlived the call's deadline";
}

// A cold start seen by a client that serves nothing: while another instance holds the claim to
// read the model from storage, the client waits for a holder instead of failing, and loads from
// the first that appears.
TEST_F(RegistryTest, AClientWaitsForTheInstanceThatReadsFromStorage) {
  EtcdServer etcd(tmp_);
  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  Child& first = Serve(etcd.url());
  ASSERT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 1; }, 20s));
  registry::Wanted wanted;
  wanted.model_id = "org/model@1";
  wanted.table_digest = Listed(etcd.url()).front().table_digest;
  first.Signal(SIGTERM);
  ASSERT_EQ(first.Wait(30s), 0) << first.Stderr();
  ASSERT_TRUE(Listed(etcd.url()).empty());
  // Another instance claims the storage read (for as long as its 30 s lease lives).
  Result<registry::Etcd> other = registry::Etcd::Parse(etcd.url());
  ASSERT_TRUE(other.ok());
  Result<int64_t> lease = other->Grant(30, registry::Clock::now() + 5s);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  Result<bool> claimed = other->PutIfAbsent(other->prefix() + registry::ReaderClaimName(wanted),
                                            "tcp://reader:1", *lease, registry::Clock::now() + 5s);
  ASSERT_TRUE(claimed.ok() && *claimed) << claimed.status().ToString();
  Result<bool> again = other->PutIfAbsent(other->prefix() + registry::ReaderClaimName(wanted),
                                          "tcp://second:1", *lease, registry::Clock::now() + 5s);
  ASSERT_TRUE(again.ok() && !*again) << "a claim is taken once";

  Child client({Bin("netloader-client"), "--model", tmp_ / "model", "--model-id", "org/model@1",
                "--registry", etcd.url(), "--verify-only", "--json", "--log-level", "info"},
               tmp_ / "waiting");
  ASSERT_TRUE(testing::WaitFor(
      [&] { return client.Stderr().find("tcp://reader:1 reads it") != std::string::npos; }, 30s))
      << client.Stderr();
  Serve(etcd.url());  // the reader's copy, served
  ASSERT_EQ(client.Wait(60s), 0) << client.Stderr();
  std::vector<nlohmann::json> lines = testing::JsonLines(client.Stdout());
  ASSERT_FALSE(lines.empty()) << client.Stderr();
  EXPECT_EQ(lines.back()["source"], endpoints_.back());

  // Nobody holds it and nobody reads it: a client that serves nothing fails at once, saying so.
  servers_.back()->Signal(SIGTERM);
  ASSERT_EQ(servers_.back()->Wait(30s), 0);
  ASSERT_TRUE(other->Revoke(*lease, registry::Clock::now() + 5s).ok());
  Run alone = Load("alone", {"--registry", etcd.url(), "--verify-only"});
  EXPECT_EQ(alone.exit_code, 5) << alone.stderr_text;
  EXPECT_NE(alone.stderr_text.find("no instance reads it from storage"), std::string::npos)
      << alone.stderr_text;
  // Nor does one that serves while it loads: netloader-client has no checkpoint data to read,
  // so it claims nothing.
  Run serving = Load("alone-serving", {"--registry", etcd.url(), "--verify-only", "--serve",
                                       "tcp://127.0.0.1:0", "--mpi-helpers"});
  EXPECT_EQ(serving.exit_code, 5) << serving.stderr_text;
  EXPECT_NE(serving.stderr_text.find("no instance reads it from storage"), std::string::npos)
      << serving.stderr_text;
  auto claims = other->Range(other->prefix() + "readers/", registry::Clock::now() + 5s);
  ASSERT_TRUE(claims.ok());
  EXPECT_TRUE(claims->empty()) << claims->front().key;
}

// Records that are not netloader's, or of another version, are skipped with a warning naming
// their key; two records of one endpoint are resolved by generation (the later process wins).
TEST_F(RegistryFaultTest, GarbageAndForeignRecordsAreIgnoredWithAWarning) {
  EtcdServer etcd(tmp_);
  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  Serve(etcd.url());
  ASSERT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 1; }, 20s));
  registry::Record stale = Listed(etcd.url()).front();
  Result<registry::Etcd> client = registry::Etcd::Parse(etcd.url());
  ASSERT_TRUE(client.ok());
  const auto deadline = registry::Clock::now() + 5s;
  const std::string holders = client->prefix() + "holders/";
  ASSERT_TRUE(client->Put(holders + "garbage", "not json {", 0, deadline).ok());
  ASSERT_TRUE(client->Put(holders + "future", R"({"version": 9})", 0, deadline).ok());
  // A dead earlier process's record of the same endpoint, in another state: it loses.
  stale.generation -= 1;
  stale.state = "unavailable";
  ASSERT_TRUE(
      client
          ->Put(registry::RecordKey(client->prefix(), stale), registry::ToJson(stale), 0, deadline)
          .ok());

  Run run = Load("client", {"--registry", etcd.url(), "--verify-only"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["source"], endpoints_[0]);
  EXPECT_NE(run.stderr_text.find("ignored the record at " + holders + "garbage"), std::string::npos)
      << run.stderr_text;
  EXPECT_NE(run.stderr_text.find("record version 9"), std::string::npos) << run.stderr_text;
}

// etcd down: a client with --source loads from it (with a warning), one without fails at once
// naming etcd; a server serves unlisted, publishes once etcd is up, and again after etcd came
// back empty (its lease gone).
TEST_F(RegistryFaultTest, WithoutEtcdClientsUseTheirSourcesAndServersPublishWhenItReturns) {
  EtcdServer etcd(tmp_);
  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  etcd.Kill();  // its ports known, nothing listening
  Child& server = Serve(etcd.url());
  ASSERT_FALSE(endpoints_[0].empty());
  EXPECT_TRUE(testing::WaitFor(
      [&] { return server.Stderr().find("still serving, not listed") != std::string::npos; }, 20s))
      << server.Stderr();

  Run with_source =
      Load("with-source", {"--registry", etcd.url(), "--source", endpoints_[0], "--verify-only"});
  EXPECT_EQ(with_source.exit_code, 0) << with_source.stderr_text;
  EXPECT_NE(with_source.stderr_text.find("loading from the 1 sources given"), std::string::npos)
      << with_source.stderr_text;
  const auto start = std::chrono::steady_clock::now();
  Run without = Load("without", {"--registry", etcd.url(), "--verify-only"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s) << "no hang on a dead registry";
  EXPECT_EQ(without.exit_code, 5) << without.stderr_text;
  EXPECT_NE(without.stderr_text.find("unreachable"), std::string::npos) << without.stderr_text;

  ASSERT_TRUE(etcd.Start()) << etcd.Log();
  EXPECT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 1; }, 20s))
      << server.Stderr();
  ASSERT_TRUE(etcd.Start(/*fresh=*/true)) << etcd.Log();  // a replaced member: no lease, no key
  EXPECT_TRUE(testing::WaitFor([&] { return Listed(etcd.url()).size() == 1; }, 20s))
      << server.Stderr();
  Run found = Load("found", {"--registry", etcd.url(), "--verify-only"});
  EXPECT_EQ(found.exit_code, 0) << found.stderr_text;
  EXPECT_TRUE(server.Running());
}

}  // namespace
}  // namespace netloader
