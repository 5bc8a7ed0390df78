#include "server/admission.h"

#include <gtest/gtest.h>

#include "netloader/limits.h"

namespace netloader::serving {
namespace {

using std::chrono::milliseconds;
using Kind = Decision::Kind;

Fingerprint Served() {
  Fingerprint f;
  f.table_digest = "abc";
  f.partition.tp_size = 2;
  f.partition.tp_rank = 1;
  return f;
}

// A whole-model load with the served fingerprint, from a client that serves at `serve_endpoint`.
Registration Whole(std::string serve_endpoint = "") {
  return {{Served(), "", {}}, std::move(serve_endpoint), 0};
}

// A partial load whose patterns select the tensors of table "selected" here.
Registration Partial() {
  Registration r = Whole();
  r.request.fingerprint.table_digest = "selected";
  r.request.selected_table_digest = "selected";
  return r;
}

AdmissionPolicy Policy(int max_sessions, int fanout,
                       milliseconds busy_retry_hint = milliseconds(500)) {
  return AdmissionPolicy(Registrar(
                             Served(), [] { return std::string("uri-1"); }, max_sessions),
                         fanout, busy_retry_hint);
}

const Holding kComplete{true, true, ""};

// What the server tells the policy, and how often the policy asked.
struct Server {
  Holding holding = kComplete;
  std::vector<std::string> children;
  Status health = Status::Ok();
  int asked_holding = 0;
  int asked_children = 0;

  Probes probes() {
    return {[this] { return health; },
            [this] {
              ++asked_holding;
              return holding;
            },
            [this] {
              ++asked_children;
              return children;
            }};
  }
};

TEST(AdmissionPolicyTest, AcceptsAMatchingClientOnAServerThatHoldsEverything) {
  AdmissionPolicy policy = Policy(4, 1);
  Server server;
  EXPECT_EQ(policy.Decide(Whole(), server.probes()).kind, Kind::kAccept);
  EXPECT_EQ(server.asked_children, 0) << "below the fan-out limit nobody is redirected";
}

TEST(AdmissionPolicyTest, ARelayThatHasNotHeardFromItsSourceSaysBusyWithinAHundredMilliseconds) {
  AdmissionPolicy policy = Policy(4, 1, milliseconds(500));
  Server server;
  server.holding = {false, false, ""};
  Decision d = policy.Decide(Whole(), server.probes());
  EXPECT_EQ(d.kind, Kind::kBusy);
  EXPECT_EQ(d.retry_after, milliseconds(100));
  EXPECT_NE(d.reason.find("has not heard from its source yet"), std::string::npos) << d.reason;

  AdmissionPolicy impatient = Policy(4, 1, milliseconds(30));
  EXPECT_EQ(impatient.Decide(Whole(), server.probes()).retry_after, milliseconds(30))
      << "a shorter hint is kept";
}

TEST(AdmissionPolicyTest, APartialLoadOnAnIncompleteRelaySaysBusyWithTheFullHint) {
  AdmissionPolicy policy = Policy(4, 1, milliseconds(500));
  Server server;
  server.holding = {true, false, ""};
  Decision d = policy.Decide(Partial(), server.probes());
  EXPECT_EQ(d.kind, Kind::kBusy);
  EXPECT_EQ(d.retry_after, milliseconds(500));
  EXPECT_NE(d.reason.find("partial loads are served once"), std::string::npos) << d.reason;

  EXPECT_EQ(policy.Decide(Whole(), server.probes()).kind, Kind::kAccept)
      << "a whole-model load streams from a relay while it loads";
  server.holding = kComplete;
  EXPECT_EQ(policy.Decide(Partial(), server.probes()).kind, Kind::kAccept);
}

TEST(AdmissionPolicyTest, AFailedRelayLoadRefusesWithUnavailableAndTheCause) {
  AdmissionPolicy policy = Policy(4, 1);
  Server server;
  server.holding = {true, false, "Timeout: source went silent"};
  for (const Registration& r : {Whole(), Partial()}) {
    Decision d = policy.Decide(r, server.probes());
    EXPECT_EQ(d.kind, Kind::kReject);
    EXPECT_EQ(d.code, StatusCode::kUnavailable);
    EXPECT_EQ(d.reason,
              "this instance is loading and its own load failed (Timeout: source went silent); "
              "ask another source");
    EXPECT_EQ(d.log, "this relay's own load failed");
    EXPECT_TRUE(d.diffs.empty());
    EXPECT_FALSE(d.send_table);
  }
}

TEST(AdmissionPolicyTest, AnotherTableIsRefusedWithOursBeforeTheRelayStateIsAsked) {
  AdmissionPolicy policy = Policy(4, 1);
  Server server;
  server.holding = {false, false, "it failed"};
  Registration r = Whole();
  r.request.fingerprint.table_digest = "other";
  Decision d = policy.Decide(r, server.probes());
  EXPECT_EQ(d.kind, Kind::kReject);
  EXPECT_EQ(d.code, StatusCode::kFingerprintMismatch);
  EXPECT_TRUE(d.send_table);
  ASSERT_EQ(d.diffs.size(), 1u);
  EXPECT_EQ(d.diffs[0].field, "table_digest");
  EXPECT_EQ(d.log, d.reason);
  EXPECT_EQ(server.asked_holding, 0);
}

TEST(AdmissionPolicyTest, AnotherPartitionIsRefusedWithoutTheTable) {
  AdmissionPolicy policy = Policy(4, 1);
  Server server;
  Registration r = Whole();
  r.request.fingerprint.partition.tp_size = 4;
  Decision d = policy.Decide(r, server.probes());
  EXPECT_EQ(d.kind, Kind::kReject);
  EXPECT_FALSE(d.send_table);
  ASSERT_EQ(d.diffs.size(), 1u);
  EXPECT_EQ(d.diffs[0].field, "partition.tp_size");
}

TEST(AdmissionPolicyTest, ADownTransportIsRefusedWithUnavailable) {
  AdmissionPolicy policy = Policy(4, 1);
  Server server;
  server.health = Status(StatusCode::kUnavailable, "ompi-server exited");
  Decision d = policy.Decide(Whole(), server.probes());
  EXPECT_EQ(d.kind, Kind::kReject);
  EXPECT_EQ(d.code, StatusCode::kUnavailable);
  EXPECT_NE(d.reason.find("ompi-server exited"), std::string::npos) << d.reason;
  EXPECT_EQ(server.asked_holding, 0);
}

TEST(AdmissionPolicyTest, AtTheFanoutLimitANewcomerGoesToTheChildSentTheFewestNewcomers) {
  AdmissionPolicy policy = Policy(4, 1);
  (void)policy.Open();
  Server server;
  server.children = {"tcp://a", "tcp://b"};
  const std::vector<std::vector<std::string>> expected = {
      {"tcp://a", "tcp://b"}, {"tcp://b", "tcp://a"}, {"tcp://a", "tcp://b"}};
  for (const auto& relays : expected) {
    Decision d = policy.Decide(Whole(), server.probes());
    EXPECT_EQ(d.kind, Kind::kRedirect);
    EXPECT_EQ(d.relays, relays);
  }
}

TEST(AdmissionPolicyTest, ANewcomerIsNeverRedirectedToItself) {
  AdmissionPolicy policy = Policy(4, 1);
  (void)policy.Open();
  Server server;
  server.children = {"tcp://a", "tcp://b"};
  Decision d = policy.Decide(Whole("tcp://a"), server.probes());
  EXPECT_EQ(d.kind, Kind::kRedirect);
  EXPECT_EQ(d.relays, std::vector<std::string>{"tcp://b"});

  server.children = {"tcp://a"};
  EXPECT_EQ(policy.Decide(Whole("tcp://a"), server.probes()).kind, Kind::kAccept)
      << "with no other child it is served here";
}

TEST(AdmissionPolicyTest, ClosingAChildForgetsTheNewcomersSentToIt) {
  AdmissionPolicy policy = Policy(4, 1);
  (void)policy.Open();
  const uint64_t child = policy.Open();
  Server server;
  server.children = {"tcp://a", "tcp://b"};
  EXPECT_EQ(policy.Decide(Whole(), server.probes()).relays[0], "tcp://a");
  EXPECT_EQ(policy.Decide(Whole(), server.probes()).relays[0], "tcp://b");
  EXPECT_EQ(policy.Decide(Whole(), server.probes()).relays[0], "tcp://a");
  // b has been sent 1, a 2; once a's session closes (and a serves again) it counts from 0.
  policy.Close(child, "tcp://a");
  EXPECT_EQ(policy.active(), 1);
  EXPECT_EQ(policy.Decide(Whole(), server.probes()).relays[0], "tcp://a");
}

TEST(AdmissionPolicyTest, AtCapacityAClientIsRedirectedBeforeItIsToldToWait) {
  AdmissionPolicy policy = Policy(1, 1, milliseconds(500));
  (void)policy.Open();
  Server server;
  server.children = {"tcp://a"};
  EXPECT_EQ(policy.Decide(Whole(), server.probes()).kind, Kind::kRedirect);

  server.children.clear();
  Decision d = policy.Decide(Whole(), server.probes());
  EXPECT_EQ(d.kind, Kind::kBusy);
  EXPECT_EQ(d.retry_after, milliseconds(500));
  EXPECT_NE(d.reason.find("1 of 1 transfer slots in use"), std::string::npos) << d.reason;
}

TEST(AdmissionPolicyTest, PartialLoadsAreNeverRedirected) {
  AdmissionPolicy policy = Policy(4, 1);
  (void)policy.Open();
  Server server;
  server.children = {"tcp://a"};
  EXPECT_EQ(policy.Decide(Partial(), server.probes()).kind, Kind::kAccept);
  EXPECT_EQ(server.asked_children, 0);
}

TEST(AdmissionPolicyTest, AFanoutOfZeroNeverRedirects) {
  AdmissionPolicy policy = Policy(4, 0);
  (void)policy.Open();
  Server server;
  server.children = {"tcp://a"};
  EXPECT_EQ(policy.Decide(Whole(), server.probes()).kind, Kind::kAccept);
  EXPECT_EQ(server.asked_children, 0);
}

TEST(AdmissionPolicyTest, AClientRedirectedTheMostTimesIsServedHere) {
  AdmissionPolicy policy = Policy(4, 1);
  (void)policy.Open();
  Server server;
  server.children = {"tcp://a"};
  Registration r = Whole();
  r.redirects = kMaxRedirects - 1;
  EXPECT_EQ(policy.Decide(r, server.probes()).kind, Kind::kRedirect);
  r.redirects = kMaxRedirects;
  EXPECT_EQ(policy.Decide(r, server.probes()).kind, Kind::kAccept);
}

}  // namespace
}  // namespace netloader::serving
