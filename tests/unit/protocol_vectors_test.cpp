// PROTOCOL.md's test vectors: the library's storage order, table digest, chunk plan, chunk,
// tensor and model digests for tests/data/protocol-vectors.safetensors must equal those in
// tests/data/protocol-vectors.json, which a second implementation written from PROTOCOL.md alone
// (tests/spec/protocol_vectors.py, hashing with xxhsum) computed and checks in CI too.

#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "netloader/fingerprint.h"
#include "netloader/safetensors.h"
#include "netloader/src/stream/manifest.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

std::string Hex64(uint64_t v) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(v));
  return text;
}

class ProtocolVectorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vectors_ = nlohmann::json::parse(
        testing::ReadFile(std::string(NETLOADER_TEST_DATA) + "/protocol-vectors.json"));
    Result<CheckpointLayout> layout =
        ReadCheckpointLayout(std::string(NETLOADER_TEST_DATA) + "/protocol-vectors.safetensors");
    ASSERT_TRUE(layout.ok()) << layout.status().ToString();
    Result<HostModel> model = HostModel::Load(*layout);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    model_.emplace(std::move(*model));
  }
  const ModelView& view() const { return model_->view(); }
  uint64_t chunk_bytes() const { return vectors_["chunk_bytes"].get<uint64_t>(); }

  nlohmann::json vectors_;
  std::optional<HostModel> model_;
};

TEST_F(ProtocolVectorsTest, StorageOrderAndTableDigest) {
  std::vector<std::string> names;
  for (const TensorView& t : view().tensors) names.push_back(t.name);
  EXPECT_EQ(names, vectors_["storage_order"].get<std::vector<std::string>>());
  EXPECT_EQ(TableDigest(view()), vectors_["table_digest"].get<std::string>());
}

TEST_F(ProtocolVectorsTest, ChunkPlan) {
  const ChunkPlan plan = ChunkPlan::Make(TensorSizes(view()), chunk_bytes());
  ASSERT_EQ(plan.size(), vectors_["chunks"].size());
  for (size_t c = 0; c < plan.size(); ++c) {
    std::vector<std::vector<uint64_t>> pieces;
    for (size_t p = 0; p < plan.piece_count(c); ++p) {
      const ChunkPiece& piece = plan.pieces(c)[p];
      pieces.push_back({piece.tensor, piece.offset, piece.length});
    }
    EXPECT_EQ(pieces, vectors_["chunks"][c]["pieces"].get<std::vector<std::vector<uint64_t>>>())
        << "chunk " << c;
  }
}

TEST_F(ProtocolVectorsTest, ChunkTensorAndModelDigests) {
  const Manifest manifest = BuildManifest(view(), chunk_bytes());
  ASSERT_EQ(manifest.chunk_digests.size(), vectors_["chunks"].size());
  for (size_t c = 0; c < manifest.chunk_digests.size(); ++c) {
    EXPECT_EQ(Hex64(manifest.chunk_digests[c]), vectors_["chunks"][c]["digest"]) << "chunk " << c;
  }
  std::vector<std::string> tensors;
  for (uint64_t d : manifest.tensor_digests) tensors.push_back(Hex64(d));
  EXPECT_EQ(tensors, vectors_["tensor_digests"].get<std::vector<std::string>>());
  EXPECT_EQ(Hex64(manifest.model_digest), vectors_["model_digest"]);
  EXPECT_EQ(manifest.table_digest, vectors_["table_digest"]);
}

// The vectors printed in PROTOCOL.md are these, so the document cannot drift from them.
TEST_F(ProtocolVectorsTest, PrintedInProtocolMd) {
  const std::string spec = testing::ReadFile(std::string(NETLOADER_SOURCE_DIR) + "/PROTOCOL.md");
  ASSERT_FALSE(spec.empty());
  EXPECT_NE(spec.find(vectors_["table_digest"].get<std::string>()), std::string::npos);
  EXPECT_NE(spec.find(vectors_["model_digest"].get<std::string>()), std::string::npos);
  for (const auto& chunk : vectors_["chunks"]) {
    EXPECT_NE(spec.find(chunk["digest"].get<std::string>()), std::string::npos) << chunk.dump();
  }
  for (const auto& digest : vectors_["tensor_digests"]) {
    EXPECT_NE(spec.find(digest.get<std::string>()), std::string::npos) << digest;
  }
}

}  // namespace
}  // namespace netloader
