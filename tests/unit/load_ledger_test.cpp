// The load ledger (client/load_ledger.h): what the sources of one load share. Built over real
// receive plans of an in-memory model; no sockets.

#include "client/load_ledger.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "netloader/src/stream/manifest.h"

namespace netloader::internal {
namespace {

constexpr uint64_t kChunk = 4096;

// A model of `tensors` tensors of 3 chunks each, filled with `seed`-dependent bytes.
struct Model {
  Model(size_t tensors, uint8_t seed) : memory(tensors * 3 * kChunk) {
    for (size_t i = 0; i < memory.size(); ++i) memory[i] = static_cast<uint8_t>(i * 7 + seed);
    for (size_t t = 0; t < tensors; ++t) {
      view.tensors.push_back({"t" + std::to_string(t),
                              DType::kU8,
                              {static_cast<int64_t>(3 * kChunk)},
                              &memory[t * 3 * kChunk],
                              3 * kChunk});
    }
    manifest = BuildManifest(view, kChunk);
  }
  ReceivePlan Plan() const {
    Result<ReceivePlan> plan =
        ReceivePlan::Make(view, kChunk, manifest.chunk_digests, manifest.model_digest);
    EXPECT_TRUE(plan.ok()) << plan.status().ToString();
    return std::move(*plan);
  }
  std::vector<uint8_t> memory;
  ModelView view;
  Manifest manifest;
};

void VerifyAll(LoadLedger& ledger, const ReceivePlan& plan, const std::vector<size_t>& chunks) {
  for (size_t c : chunks) ledger.Verified(plan.range(c).first, plan.range(c).second);
}

std::vector<size_t> Iota(size_t n) {
  std::vector<size_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST(LoadLedgerTest, ALoneSourceClaimsEveryChunkAtOnceAndCompletes) {
  Model model(4, 1);
  const ReceivePlan plan = model.Plan();
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  LoadLedger ledger(
      model.view.total_bytes(), 1,
      [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); }, nullptr);
  ASSERT_TRUE(ledger.Attach(model.manifest.tensor_digests, "a").ok());
  size_t from = 0;
  const std::vector<size_t> chunks = ledger.Claim(plan, SIZE_MAX, &from);
  EXPECT_EQ(chunks, Iota(plan.size()));
  EXPECT_TRUE(ledger.Claim(plan, SIZE_MAX, &from).empty()) << "everything is claimed";
  VerifyAll(ledger, plan, chunks);
  EXPECT_TRUE(ledger.complete());
  EXPECT_EQ(ledger.verified_bytes(), model.view.total_bytes());
  ASSERT_EQ(progress.size(), plan.size());
  EXPECT_EQ(progress.back(), std::make_pair(model.view.total_bytes(), model.view.total_bytes()));
  EXPECT_TRUE(ledger.Claim(plan, SIZE_MAX, &from).empty());
  EXPECT_EQ(from, plan.size()) << "the cursor moved past the verified start";
}

TEST(LoadLedgerTest, StripedSourcesClaimDisjointSharesThatShrinkTowardsTheEnd) {
  Model model(16, 2);  // 48 chunks
  const ReceivePlan plan = model.Plan();
  LoadLedger ledger(model.view.total_bytes(), 2, nullptr, nullptr);
  size_t from_a = 0, from_b = 0;
  // 48 chunks left, 2 sources: a share of 48 / (2 x 2) = 12, capped at the batch of 8.
  const std::vector<size_t> a = ledger.Claim(plan, 8, &from_a);
  EXPECT_EQ(a.size(), 8u);
  const std::vector<size_t> b = ledger.Claim(plan, 8, &from_b);
  ASSERT_EQ(b.size(), 8u);
  EXPECT_EQ(b.front(), 8u) << "the second source skips what the first claimed";
  VerifyAll(ledger, plan, a);
  VerifyAll(ledger, plan, b);
  std::vector<size_t> rest;
  for (size_t c : ledger.Claim(plan, 8, &from_a)) rest.push_back(c);
  EXPECT_EQ(rest.size(), 8u);  // 32 left: 32 / 4 = 8
  EXPECT_EQ(from_a, 16u);
  // Near the end the share falls to one chunk at a time.
  VerifyAll(ledger, plan, rest);
  for (size_t left = plan.size() - 24; left > 0; --left) {
    std::vector<size_t> next = ledger.Claim(plan, 8, &from_a);
    ASSERT_FALSE(next.empty());
    EXPECT_LE(next.size(), std::max<size_t>(1, left / 4));
    VerifyAll(ledger, plan, next);
    left -= next.size() - 1;
  }
  EXPECT_TRUE(ledger.complete());
}

TEST(LoadLedgerTest, ChunksAFailedSourceGivesBackGoToTheOthers) {
  Model model(2, 3);
  const ReceivePlan plan = model.Plan();
  LoadLedger ledger(model.view.total_bytes(), 2, nullptr, nullptr);
  size_t from_a = 0, from_b = 0;
  const std::vector<size_t> a = ledger.Claim(plan, 2, &from_a);
  ASSERT_EQ(a, (std::vector<size_t>{0}));                         // 6 chunks / (2 x 2) = 1
  ledger.Verified(plan.range(0).first, plan.range(0).first + 1);  // not the whole chunk
  ledger.Release(plan, a);
  EXPECT_EQ(ledger.Claim(plan, 2, &from_b), (std::vector<size_t>{0}))
      << "a chunk given back unverified is claimed again";
}

TEST(LoadLedgerTest, OtherWeightsDropWhatWasVerifiedOrAreRefusedWhileAnotherSourceIsAttached) {
  Model ours(2, 4), theirs(2, 5);
  const ReceivePlan plan = ours.Plan();
  LoadLedger ledger(ours.view.total_bytes(), 2, nullptr, nullptr);
  ASSERT_TRUE(ledger.Attach(ours.manifest.tensor_digests, "a").ok());
  ledger.Verified(plan.range(0).first, plan.range(0).second);
  Status refused = ledger.Attach(theirs.manifest.tensor_digests, "b");
  EXPECT_EQ(refused.code(), StatusCode::kFingerprintMismatch);
  EXPECT_NE(refused.message().find("b holds other weights"), std::string::npos)
      << refused.message();
  EXPECT_EQ(ledger.verified_bytes(), kChunk) << "a refused source drops nothing";
  ledger.Detach();
  ASSERT_TRUE(ledger.Attach(theirs.manifest.tensor_digests, "b").ok());
  EXPECT_EQ(ledger.verified_bytes(), 0u) << "bytes of other weights are not kept";
  ledger.Detach();
  ASSERT_TRUE(ledger.Attach(theirs.manifest.tensor_digests, "c").ok()) << "the same weights";
}

TEST(LoadLedgerTest, ADeltaLoadKeepsTheChunksAlreadyInPlace) {
  Model source(3, 6);
  Model destination(3, 6);
  // Change one byte in the second tensor's last chunk: only that chunk is missing.
  destination.memory[2 * 3 * kChunk - 1] ^= 0xff;
  const ReceivePlan plan =
      ReceivePlan::Make(destination.view, kChunk, source.manifest.chunk_digests,
                        source.manifest.model_digest)
          .value();
  LoadLedger ledger(destination.view.total_bytes(), 1, nullptr, nullptr);
  ledger.KeepWhatIsInPlace(plan);
  EXPECT_EQ(ledger.reused_bytes(), 8 * kChunk);
  size_t from = 0;
  EXPECT_EQ(ledger.Claim(plan, SIZE_MAX, &from), (std::vector<size_t>{5}));
}

// A relay's feed that records what it is told.
class RecordingFeed : public RelayFeed {
 public:
  Status Adopt(const Manifest& manifest) override {
    adopted = manifest.model_digest;
    return Status::Ok();
  }
  void Held(uint64_t begin, uint64_t end) override { held.Add(begin, end); }
  void LoadEnded(const Status& status) override { ended = status.ToString(); }
  Result<bool> ClaimInRegistry(const std::string&) override { return false; }
  const ModelView& relayed_model() const override { return model; }
  bool relaying() const override { return true; }
  ModelView model;
  uint64_t adopted = 0;
  ByteRanges held;
  std::string ended;
};

TEST(LoadLedgerTest, TheRelayHearsOfEveryVerifiedByteAndTheOutcome) {
  Model model(2, 7);
  const ReceivePlan plan = model.Plan();
  RecordingFeed feed;
  LoadLedger ledger(model.view.total_bytes(), 1, nullptr, &feed);
  ASSERT_TRUE(ledger.Attach(model.manifest.tensor_digests, "a").ok());
  ledger.Verified(plan.range(0).first, plan.range(0).second);
  ledger.Relay(model.manifest, "a");  // what was verified before the relay adopted the stream
  EXPECT_EQ(feed.adopted, model.manifest.model_digest);
  EXPECT_EQ(feed.held.bytes(), kChunk);
  ledger.Verified(plan.range(1).first, plan.range(1).second);
  EXPECT_EQ(feed.held.bytes(), 2 * kChunk);
  ledger.Ended(Status(StatusCode::kUnavailable, "gone"));
  EXPECT_NE(feed.ended.find("gone"), std::string::npos);
}

}  // namespace
}  // namespace netloader::internal
