// The source schedule (client/source_schedule.h): which source a load tries next, redirects,
// and what the attempts came to. No sockets.

#include "client/source_schedule.h"

#include <gtest/gtest.h>

namespace netloader::internal {
namespace {

Status Refused(const std::string& field) {
  return Status(StatusCode::kFingerprintMismatch, "refused: " + field + " differs",
                {{field, "server", "client"}});
}

std::vector<std::string> Order(SourceSchedule& schedule) {
  std::vector<std::string> order;
  while (std::optional<SourceSchedule::Turn> turn = schedule.Next(false)) {
    order.push_back(turn->source);
    schedule.Failed(*turn, Status(StatusCode::kUnavailable, "down"), 0, {}, false);
  }
  return order;
}

TEST(SourceScheduleTest, TriesSourcesInOrderAndNamesEveryFailure) {
  SourceSchedule schedule({"a", "b", "c"});
  EXPECT_EQ(Order(schedule), (std::vector<std::string>{"a", "b", "c"}));
  Result<LoadStats> outcome = schedule.Outcome(false);
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(outcome.status().message(),
            "no source delivered the model (a: Unavailable: down; b: Unavailable: down; c: "
            "Unavailable: down)");
}

TEST(SourceScheduleTest, TheLastFailureGivesTheCodeAndEachRefusalsDiffsAppearOnce) {
  SourceSchedule schedule({"a", "b", "c"});
  std::optional<SourceSchedule::Turn> turn = schedule.Next(false);
  schedule.Failed(*turn, Refused("partition"), 0, {}, false);
  turn = schedule.Next(false);
  schedule.Failed(*turn, Refused("partition"), 0, {}, false);
  turn = schedule.Next(false);
  schedule.Failed(*turn, Status(StatusCode::kTimeout, "slow"), 0, {}, false);
  Status status = schedule.Outcome(false).status();
  EXPECT_EQ(status.code(), StatusCode::kTimeout);
  ASSERT_EQ(status.diffs().size(), 1u);
  EXPECT_EQ(status.diffs()[0].field, "partition");
}

TEST(SourceScheduleTest, ARedirectPutsTheRelaysNextThenTheRedirectingSourceAgain) {
  SourceSchedule schedule({"seed", "other"});
  std::optional<SourceSchedule::Turn> turn = schedule.Next(false);
  EXPECT_EQ(turn->redirects, 0);
  // "other" is still to be tried, so it is not added twice.
  schedule.Failed(*turn, Status(StatusCode::kUnavailable, "redirected"), 0,
                  {"relay1", "other", "relay1", "relay2"}, false);
  turn = schedule.Next(false);
  EXPECT_EQ(turn->source, "relay1");
  EXPECT_EQ(turn->redirects, 1) << "Register.redirects counts the redirects followed";
  schedule.Failed(*turn, Status(StatusCode::kUnavailable, "down"), 0, {}, false);
  EXPECT_EQ(Order(schedule), (std::vector<std::string>{"relay2", "seed", "other"}));
  EXPECT_EQ(schedule.Outcome(false).status().message().find("seed: Unavailable: redirected"),
            std::string::npos)
      << "a redirect is not a failure";
}

TEST(SourceScheduleTest, FollowsAtMostTheRedirectLimitAndThenEnds) {
  // Every source redirects to a new relay: a chain that would never end.
  SourceSchedule schedule({"s0"});
  int tried = 0, most_redirects = 0;
  while (std::optional<SourceSchedule::Turn> turn = schedule.Next(false)) {
    ASSERT_LT(++tried, 100) << "the schedule does not end";
    most_redirects = std::max(most_redirects, turn->redirects);
    schedule.Failed(*turn, Status(StatusCode::kUnavailable, "redirected"), 0,
                    {"s" + std::to_string(tried)}, false);
  }
  EXPECT_EQ(most_redirects, kMaxRedirects);
  // Past the limit a redirect counts as a failure, and the load fails naming it.
  Status status = schedule.Outcome(false).status();
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("redirected"), std::string::npos);
}

TEST(SourceScheduleTest, NothingMoreIsTriedOnceASourceDeliveredAndAttemptsComeInOrder) {
  SourceSchedule schedule({"a", "b", "c"});
  std::optional<SourceSchedule::Turn> a = schedule.Next(false);
  std::optional<SourceSchedule::Turn> b = schedule.Next(false);  // striped: both at once
  LoadStats stats;
  stats.source = "b";
  schedule.Delivered(*b, stats, 300);
  schedule.Failed(*a, Status(StatusCode::kUnavailable, "down"), 100, {}, false);
  EXPECT_FALSE(schedule.Next(false).has_value());
  Result<LoadStats> outcome = schedule.Outcome(false);
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(outcome->source, "b");
  ASSERT_EQ(outcome->attempts.size(), 2u);
  EXPECT_EQ(outcome->attempts[0].source, "a");
  EXPECT_EQ(outcome->attempts[0].bytes, 100u);
  EXPECT_EQ(outcome->attempts[1].source, "b");
  EXPECT_TRUE(outcome->attempts[1].status.ok());
}

TEST(SourceScheduleTest, ACancelledLoadTriesNothingMoreAndSaysCancelledWithWhatFailed) {
  SourceSchedule schedule({"a", "b"});
  std::optional<SourceSchedule::Turn> a = schedule.Next(false);
  schedule.Failed(*a, Status(StatusCode::kUnavailable, "down"), 0, {}, false);
  EXPECT_FALSE(schedule.Next(true).has_value());
  Status status = schedule.Outcome(true).status();
  EXPECT_EQ(status.code(), StatusCode::kCancelled);
  EXPECT_EQ(status.message(), "the load was cancelled (a: Unavailable: down)");
}

}  // namespace
}  // namespace netloader::internal
