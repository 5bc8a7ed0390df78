#include "netloader/src/stream/manifest.h"

#include "netloader/src/stream/chunk_stream.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <numeric>

#include "netloader/fingerprint.h"
#include "netloader/src/protocol/wire.h"

namespace netloader {
namespace {

std::vector<uint64_t> Covered(const ChunkPlan& plan, size_t tensors) {
  std::vector<uint64_t> bytes(tensors, 0);
  for (size_t c = 0; c < plan.size(); ++c) {
    for (size_t p = 0; p < plan.piece_count(c); ++p)
      bytes[plan.pieces(c)[p].tensor] += plan.pieces(c)[p].length;
  }
  return bytes;
}

TEST(ChunkPlanTest, SplitsLargeTensorsCoalescesSmallOnesAndSkipsEmptyOnes) {
  const uint64_t kChunk = 100;
  const std::vector<uint64_t> sizes = {0, 10, 20, 250, 30, 70, 5, 0};
  ChunkPlan plan = ChunkPlan::Make(sizes, kChunk);
  // [10,20] | 250 -> 100,100,50 | [30,70] | [5]
  ASSERT_EQ(plan.size(), 6u);
  EXPECT_EQ(plan.piece_count(0), 2u);
  EXPECT_EQ(plan.pieces(1)[0].length, 100u);
  EXPECT_EQ(plan.pieces(3)[0].offset, 200u);
  EXPECT_EQ(plan.pieces(3)[0].length, 50u);
  EXPECT_EQ(plan.piece_count(4), 2u);
  EXPECT_EQ(plan.piece_count(5), 1u);
  EXPECT_EQ(Covered(plan, sizes.size()), sizes) << "every byte in exactly one chunk";
  for (size_t c = 0; c < plan.size(); ++c) {
    uint64_t bytes = 0;
    for (size_t p = 0; p < plan.piece_count(c); ++p) bytes += plan.pieces(c)[p].length;
    EXPECT_LE(bytes, kChunk);
    EXPECT_GT(bytes, 0u);
  }
}

TEST(ChunkPlanTest, TensorsBackToBackInMemoryBecomeOneSpan) {
  // Four tensors in one buffer: [0, 100) [100, 150) [150, 250), a gap, then [300, 400).
  std::vector<char> memory(400);
  ModelView model;
  const std::vector<std::pair<size_t, size_t>> placed = {
      {0, 100}, {100, 50}, {150, 100}, {300, 100}};
  for (const auto& [offset, size] : placed) {
    model.tensors.push_back({"t" + std::to_string(offset),
                             DType::kU8,
                             {static_cast<int64_t>(size)},
                             &memory[offset],
                             size});
  }
  transfer::ChunkList chunks = ChunkPlan::Make(TensorSizes(model), 1000).Spans(model);
  ASSERT_EQ(chunks.size(), 1u);
  ASSERT_EQ(chunks.span_count(0), 2u) << "0..250 is one run; 300..400 another";
  EXPECT_EQ(chunks.spans(0)[0].data, memory.data());
  EXPECT_EQ(chunks.spans(0)[0].size, 250u);
  EXPECT_EQ(chunks.spans(0)[1].data, &memory[300]);
  EXPECT_EQ(chunks.bytes(0), 350u);
  // Runs never cross a chunk boundary: each chunk is its own message.
  transfer::ChunkList small = ChunkPlan::Make(TensorSizes(model), 100).Spans(model);
  for (size_t c = 0; c < small.size(); ++c) EXPECT_LE(small.bytes(c), 100u);
}

TEST(ChunkPlanTest, AllEmptyModelHasNoChunks) {
  EXPECT_EQ(ChunkPlan::Make({0, 0}, 4096).size(), 0u);
}

ModelView Model(std::vector<std::vector<unsigned char>>& storage) {
  ModelView m;
  for (size_t i = 0; i < storage.size(); ++i) {
    m.tensors.push_back({"t" + std::to_string(i),
                         DType::kU8,
                         {static_cast<int64_t>(storage[i].size())},
                         storage[i].empty() ? nullptr : storage[i].data(),
                         storage[i].size()});
  }
  return m;
}

TEST(ManifestTest, DigestsMatchWhatAReceiverComputesPerChunk) {
  std::vector<std::vector<unsigned char>> storage = {std::vector<unsigned char>(5000, 1),
                                                     {},
                                                     std::vector<unsigned char>(300, 2),
                                                     std::vector<unsigned char>(9000, 3)};
  ModelView model = Model(storage);
  Manifest m = BuildManifest(model, 4096);
  ChunkPlan plan = ChunkPlan::Make(TensorSizes(model), 4096);
  transfer::ChunkList chunks = plan.Spans(model);
  ASSERT_EQ(m.chunk_digests.size(), chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) EXPECT_EQ(m.chunk_digests[i], ChunkDigest(chunks, i));
  EXPECT_EQ(m.model_digest, DigestOfDigests(m.chunk_digests));
  // Per-tensor digests see the whole tensor even when it was split across chunks.
  ModelView single = model;
  single.tensors = {model.tensors[3]};
  EXPECT_EQ(m.tensor_digests[3], BuildManifest(single, 1 << 20).tensor_digests[0]);
  EXPECT_EQ(m.tensor_digests[1], XXH3_64bits(nullptr, 0)) << "a zero-byte tensor";

  storage[3][8999] ^= 1;
  Manifest changed = BuildManifest(model, 4096);
  EXPECT_NE(changed.tensor_digests[3], m.tensor_digests[3]);
  EXPECT_EQ(changed.tensor_digests[2], m.tensor_digests[2]);
  EXPECT_NE(changed.chunk_digests.back(), m.chunk_digests.back());
  EXPECT_EQ(changed.chunk_digests.front(), m.chunk_digests.front());
}

// The library hashes through libxxhash's CPU dispatch (AVX2/AVX-512); this file calls the plain
// SSE2 entry points. A source and a client on different CPUs must agree, so every digest is the
// XXH3 of the bytes whichever code computed it, across the sizes where XXH3 changes strategy.
TEST(ManifestTest, DigestsAreXxh3OfTheBytesOnAnyCpu) {
  std::vector<std::vector<unsigned char>> storage = {std::vector<unsigned char>((1 << 20) + 7),
                                                     std::vector<unsigned char>(129),
                                                     std::vector<unsigned char>(240 * 1024 + 3)};
  uint32_t x = 12345;
  for (auto& t : storage) {
    for (auto& b : t) b = static_cast<unsigned char>((x = x * 1664525 + 1013904223) >> 24);
  }
  ModelView model = Model(storage);
  const uint64_t kChunk = 256 << 10;
  Manifest m = BuildManifest(model, kChunk);
  for (size_t i = 0; i < storage.size(); ++i) {
    EXPECT_EQ(m.tensor_digests[i], XXH3_64bits(storage[i].data(), storage[i].size())) << i;
  }
  transfer::ChunkList chunks = ChunkPlan::Make(TensorSizes(model), kChunk).Spans(model);
  for (size_t i = 0; i < chunks.size(); ++i) {
    std::vector<unsigned char> bytes;
    for (size_t s = 0; s < chunks.span_count(i); ++s) {
      const auto* data = static_cast<const unsigned char*>(chunks.spans(i)[s].data);
      bytes.insert(bytes.end(), data, data + chunks.spans(i)[s].size);
    }
    EXPECT_EQ(m.chunk_digests[i], XXH3_64bits(bytes.data(), bytes.size())) << "chunk " << i;
    std::vector<unsigned char> copy(bytes.size());
    transfer::Span out{copy.data(), copy.size()};
    EXPECT_EQ(CopyAndDigest(reinterpret_cast<const char*>(bytes.data()), &out, 1, true),
              m.chunk_digests[i]);
    EXPECT_EQ(copy, bytes);
  }
}

TEST(ManifestTest, CarriesTheTableDigestAndSurvivesTheWire) {
  std::vector<std::vector<unsigned char>> storage = {std::vector<unsigned char>(8),
                                                     std::vector<unsigned char>(4)};
  ModelView model = Model(storage);
  Manifest m = BuildManifest(model, 4096);
  EXPECT_EQ(m.table_digest, TableDigest(model));
  wire::Manifest encoded;
  ToWire(m, &encoded);
  Result<Manifest> back = FromWire(encoded);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->table_digest, m.table_digest);
  EXPECT_EQ(back->tensor_digests, m.tensor_digests);
  EXPECT_EQ(back->chunk_bytes, m.chunk_bytes);
  EXPECT_EQ(back->chunk_digests, m.chunk_digests);
  EXPECT_EQ(back->model_digest, m.model_digest);
}

// What resume keeps: verified byte ranges, merged, and the chunks they leave to fetch.
TEST(ByteRangesTest, MergesOverlappingAndTouchingRangesAndAnswersCoverage) {
  ByteRanges r;
  EXPECT_TRUE(r.Covers(5, 5)) << "an empty range is always covered";
  EXPECT_FALSE(r.Covers(0, 1));
  r.Add(10, 20);
  r.Add(30, 40);
  EXPECT_EQ(r.bytes(), 20u);
  EXPECT_TRUE(r.Covers(10, 20));
  EXPECT_TRUE(r.Covers(12, 18));
  EXPECT_FALSE(r.Covers(15, 31)) << "a gap in the middle";
  EXPECT_FALSE(r.Covers(5, 15));
  r.Add(20, 30);  // touches both: one range
  EXPECT_TRUE(r.Covers(10, 40));
  EXPECT_EQ(r.bytes(), 30u);
  r.Add(0, 50);  // swallows it
  EXPECT_EQ(r.bytes(), 50u);
  r.Add(45, 60);
  r.Add(70, 71);
  EXPECT_EQ(r.bytes(), 61u);
  EXPECT_FALSE(r.Covers(59, 71));
  EXPECT_TRUE(r.Intersects(55, 65));
  EXPECT_FALSE(r.Intersects(60, 70)) << "end-exclusive on both sides";
  EXPECT_TRUE(r.Intersects(69, 71));
  r.Remove(10, 20);  // a hole in [0, 60)
  EXPECT_EQ(r.bytes(), 51u);
  EXPECT_FALSE(r.Intersects(10, 20));
  EXPECT_TRUE(r.Covers(0, 10));
  EXPECT_TRUE(r.Covers(20, 60));
  r.Remove(5, 100);  // cuts one range, drops the others
  EXPECT_EQ(r.bytes(), 5u);
  EXPECT_TRUE(r.Covers(0, 5));
  r.Clear();
  EXPECT_EQ(r.bytes(), 0u);
}

TEST(ReceivePlanTest, MissingListsTheChunksNotWhollyVerifiedEvenUnderAnotherChunkSize) {
  std::vector<std::vector<unsigned char>> storage = {std::vector<unsigned char>(10000, 1),
                                                     std::vector<unsigned char>(3000, 2),
                                                     std::vector<unsigned char>(5000, 3)};
  ModelView model = Model(storage);
  Manifest m = BuildManifest(model, 4096);
  Result<ReceivePlan> plan = ReceivePlan::Make(model, 4096, m.chunk_digests, m.model_digest);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  // Chunks: [0, 4096) [4096, 8192) [8192, 10000) [10000, 13000) [13000, 17096) [17096, 18000).
  ASSERT_EQ(plan->size(), 6u);
  EXPECT_EQ(plan->range(3), std::make_pair(uint64_t{10000}, uint64_t{13000}));
  ByteRanges have;
  EXPECT_EQ(plan->Missing(have).size(), 6u);
  // What a source with 8 KiB chunks delivered: its first chunk, [0, 8192).
  have.Add(0, 8192);
  EXPECT_EQ(plan->Missing(have), (std::vector<size_t>{2, 3, 4, 5}));
  have.Add(8192, 12000);  // part of chunk 3: it is still missing
  EXPECT_EQ(plan->Missing(have), (std::vector<size_t>{3, 4, 5}));
  have.Add(12000, 18000);
  EXPECT_TRUE(plan->Missing(have).empty());

  m.chunk_digests[1] ^= 1;  // digests that do not add up to the model digest
  Result<ReceivePlan> forged = ReceivePlan::Make(model, 4096, m.chunk_digests, m.model_digest);
  EXPECT_EQ(forged.status().code(), StatusCode::kProtocolMismatch);
}

TEST(RequestWireTest, RunsOfChunksBecomeRangesAndBadRangesAreRefusedNamingThem) {
  wire::Request request;
  ToWire({0, 1, 2, 5, 7, 8}, &request);
  ASSERT_EQ(request.ranges_size(), 3);
  EXPECT_EQ(request.ranges(1).first(), 5u);
  EXPECT_EQ(request.ranges(1).count(), 1u);
  Result<std::vector<size_t>> chunks = FromWire(request, 9);
  ASSERT_TRUE(chunks.ok()) << chunks.status().ToString();
  EXPECT_EQ(*chunks, (std::vector<size_t>{0, 1, 2, 5, 7, 8}));
  EXPECT_EQ(FromWire(request, 8).status().code(), StatusCode::kInvalidArgument)
      << "chunk 8 of a stream of 8";
  EXPECT_NE(FromWire(request, 8).status().message().find("{first 7, count 2} reaches chunk 8"),
            std::string::npos)
      << FromWire(request, 8).status().message();
  wire::Request empty;
  EXPECT_NE(FromWire(empty, 8).status().message().find("at least one chunk"), std::string::npos);
  wire::Request zero;
  zero.add_ranges()->set_first(1);  // count 0
  EXPECT_EQ(FromWire(zero, 8).status().code(), StatusCode::kInvalidArgument);
  wire::Request huge;
  huge.add_ranges()->set_count(~0ull);  // first + count would wrap around
  EXPECT_EQ(FromWire(huge, 8).status().code(), StatusCode::kInvalidArgument);
  wire::Request twice;  // more chunks than the stream has: refused before any are listed
  for (int i = 0; i < 3; ++i) {
    wire::ChunkRange* r = twice.add_ranges();
    r->set_first(0);
    r->set_count(8);
  }
  EXPECT_EQ(FromWire(twice, 8).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace netloader
