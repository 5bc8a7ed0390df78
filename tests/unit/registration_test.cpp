#include "netloader/src/protocol/registration.h"

#include <gtest/gtest.h>

namespace netloader {
namespace {

Fingerprint Served() {
  Fingerprint f;
  f.table_digest = "abc";
  f.partition.tp_size = 2;
  f.partition.tp_rank = 1;
  return f;
}

RegisterRequest Request() { return {Served(), "", {}}; }

Status Healthy() { return Status::Ok(); }

TEST(RegistrarTest, AcceptsMatchingClientUpToTheLimitThenSaysBusy) {
  Registrar r(
      Served(), [] { return std::string("uri-1"); }, 2);
  EXPECT_EQ(r.Decide(Request(), Healthy).kind, Admission::Kind::kAccept);
  const uint64_t a = r.Open();
  const uint64_t b = r.Open();
  EXPECT_NE(a, b);
  Admission busy = r.Decide(Request(), Healthy);
  EXPECT_EQ(busy.kind, Admission::Kind::kBusy);
  EXPECT_NE(busy.reason.find("2 of 2"), std::string::npos) << busy.reason;
  r.Close(a);
  EXPECT_EQ(r.Decide(Request(), Healthy).kind, Admission::Kind::kAccept);
}

TEST(RegistrarTest, RejectsClientWithDifferentTensorParallelSize) {
  Registrar r(
      Served(), [] { return std::string("uri-1"); }, 4);
  RegisterRequest request = Request();
  request.fingerprint.partition.tp_size = 4;
  Admission a = r.Decide(request, Healthy);
  EXPECT_EQ(a.kind, Admission::Kind::kReject);
  EXPECT_EQ(a.code, StatusCode::kFingerprintMismatch);
  ASSERT_EQ(a.diffs.size(), 1u);
  EXPECT_EQ(a.diffs[0].field, "partition.tp_size");
  EXPECT_NE(a.reason.find("server='2' client='4'"), std::string::npos) << a.reason;
}

TEST(RegistrarTest, FingerprintIsCheckedBeforeCapacity) {
  Registrar r(
      Served(), [] { return std::string("uri-1"); }, 1);
  (void)r.Open();
  RegisterRequest request = Request();
  request.fingerprint.table_digest = "other";
  EXPECT_EQ(r.Decide(request, Healthy).kind, Admission::Kind::kReject);
}

TEST(RegistrarTest, RejectsClientBoundToAnotherRendezvous) {
  Registrar r(
      Served(), [] { return std::string("uri-1"); }, 4);
  RegisterRequest request = Request();
  request.rendezvous_uri = "uri-2";
  Admission a = r.Decide(request, Healthy);
  EXPECT_EQ(a.kind, Admission::Kind::kReject);
  EXPECT_EQ(a.code, StatusCode::kUnavailable);
  ASSERT_EQ(a.diffs.size(), 1u);
  EXPECT_EQ(a.diffs[0].field, "rendezvous_uri");
  request.rendezvous_uri = "uri-1";
  EXPECT_EQ(r.Decide(request, Healthy).kind, Admission::Kind::kAccept);
}

TEST(RegistrarTest, RefusesWithTheReasonWhenTheTransportIsDown) {
  Registrar r(
      Served(), [] { return std::string("uri-1"); }, 4);
  Admission a =
      r.Decide(Request(), [] { return Status(StatusCode::kUnavailable, "ompi-server exited"); });
  EXPECT_EQ(a.kind, Admission::Kind::kReject);
  EXPECT_EQ(a.code, StatusCode::kUnavailable);
  EXPECT_NE(a.reason.find("ompi-server exited"), std::string::npos);
}

// Health may cost a network probe: asked only for a request that would otherwise be admitted.
TEST(RegistrarTest, AsksTransportHealthOnlyWhenTheFingerprintAndRendezvousMatch) {
  Registrar r(
      Served(), [] { return std::string("uri-1"); }, 2);
  int asked = 0;
  auto health = [&] {
    ++asked;
    return Status::Ok();
  };
  RegisterRequest other = Request();
  other.fingerprint.partition.tp_rank = 0;
  EXPECT_EQ(r.Decide(other, health).kind, Admission::Kind::kReject);
  RegisterRequest elsewhere = Request();
  elsewhere.rendezvous_uri = "uri-2";
  EXPECT_EQ(r.Decide(elsewhere, health).kind, Admission::Kind::kReject);
  EXPECT_EQ(asked, 0);
  EXPECT_EQ(r.Decide(Request(), health).kind, Admission::Kind::kAccept);
  EXPECT_EQ(asked, 1);
}

// A partial load is compared against the tensors its patterns select on the server, and a
// pipeline stage may load from a source with another pipeline split; tensor-parallel shards hold
// other bytes under the same names, so their split still must match.
TEST(RegistrarTest, APartialLoadIsMatchedOnTheSelectionAndIgnoresOnlyThePipelineSplit) {
  Registrar r(
      Served(), [] { return std::string("uri-1"); }, 4);
  RegisterRequest request = Request();
  request.fingerprint.table_digest = "selected";
  request.fingerprint.partition.pp_size = 2;
  request.fingerprint.partition.pp_rank = 1;
  Admission whole = r.Decide(request, Healthy);
  EXPECT_EQ(whole.kind, Admission::Kind::kReject) << "a whole-model load compares every field";
  EXPECT_EQ(whole.diffs.size(), 3u);

  request.selected_table_digest = "selected";
  EXPECT_EQ(r.Decide(request, Healthy).kind, Admission::Kind::kAccept);

  request.selected_table_digest = "other";
  Admission other = r.Decide(request, Healthy);
  EXPECT_EQ(other.kind, Admission::Kind::kReject);
  ASSERT_EQ(other.diffs.size(), 1u);
  EXPECT_EQ(other.diffs[0].field, "table_digest");

  request.selected_table_digest = "selected";
  request.fingerprint.partition.tp_rank = 0;
  Admission shard = r.Decide(request, Healthy);
  EXPECT_EQ(shard.kind, Admission::Kind::kReject);
  ASSERT_EQ(shard.diffs.size(), 1u);
  EXPECT_EQ(shard.diffs[0].field, "partition.tp_rank");
}

}  // namespace
}  // namespace netloader
