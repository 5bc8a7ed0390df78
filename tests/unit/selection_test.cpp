// Partial loads: tensor patterns, the selection both sides make with them, and the manifest of
// the selected tensors' stream.

#include <gtest/gtest.h>

#include <random>

#include "netloader/src/model/selection.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/src/stream/manifest.h"
#include "netloader/tensor.h"

namespace netloader {
namespace {

TEST(TensorPatternTest, WildcardsMatchWholeNames) {
  EXPECT_TRUE(TensorPatternMatches("model.layers.1.mlp.up.weight", "model.layers.1.mlp.up.weight"));
  EXPECT_FALSE(TensorPatternMatches("model.layers.1", "model.layers.1.mlp.up.weight"))
      << "a pattern matches the whole name, not a prefix";
  EXPECT_TRUE(TensorPatternMatches("model.layers.1.*", "model.layers.1.mlp.up.weight"));
  EXPECT_FALSE(TensorPatternMatches("model.layers.1.*", "model.layers.10.mlp.up.weight"));
  EXPECT_TRUE(TensorPatternMatches("model.layers.*.mlp.*", "model.layers.12.mlp.down.weight"));
  EXPECT_FALSE(TensorPatternMatches("model.layers.*.mlp.*", "model.layers.12.attn.q.weight"));
  EXPECT_TRUE(TensorPatternMatches("*", ""));
  EXPECT_TRUE(TensorPatternMatches("*.weight", ".weight"));
  EXPECT_TRUE(TensorPatternMatches("layers.?.w", "layers.7.w"));
  EXPECT_FALSE(TensorPatternMatches("layers.?.w", "layers.17.w"));
  EXPECT_TRUE(TensorPatternMatches("a*b*c", "aXbYbZc"));
  EXPECT_FALSE(TensorPatternMatches("a*b*c", "aXbYbZ"));
  EXPECT_TRUE(TensorPatternMatches("**x", "x"));
  // A backslash makes the next character literal.
  EXPECT_TRUE(TensorPatternMatches("odd\\*name", "odd*name"));
  EXPECT_FALSE(TensorPatternMatches("odd\\*name", "oddXname"));
  EXPECT_TRUE(TensorPatternMatches("q\\?", "q?"));
  EXPECT_FALSE(TensorPatternMatches("q\\?", "qx"));
  EXPECT_TRUE(TensorPatternMatches("back\\\\slash", "back\\slash"));
}

// PROTOCOL.md, section 4.2.1: '?' and '*' count characters, a character being one UTF-8 code
// point (1 to 4 bytes), so that patterns over non-ASCII names select what a person reads.
TEST(TensorPatternTest, AQuestionMarkMatchesOneUtf8CharacterNotOneByte) {
  EXPECT_TRUE(TensorPatternMatches("层.?.权重", "层.0.权重"));
  EXPECT_TRUE(TensorPatternMatches("?.0.??", "层.0.权重")) << "3-byte characters";
  EXPECT_FALSE(TensorPatternMatches("?.0.?", "层.0.权重")) << "权重 is two characters";
  EXPECT_FALSE(TensorPatternMatches("???.0.??????", "层.0.权重")) << "not one '?' per byte";
  EXPECT_TRUE(TensorPatternMatches("?", "é"));
  EXPECT_FALSE(TensorPatternMatches("??", "é")) << "é is one character of 2 bytes";
  EXPECT_TRUE(TensorPatternMatches("caf?", "café"));
  EXPECT_FALSE(TensorPatternMatches("caf??", "café"));
  EXPECT_TRUE(TensorPatternMatches("?", "\xF0\x9F\x98\x80")) << "U+1F600, 4 bytes";
  EXPECT_FALSE(TensorPatternMatches("??", "\xF0\x9F\x98\x80"));
  // '*' takes whole characters too: a '?' after it never matches the tail of one.
  EXPECT_FALSE(TensorPatternMatches("*??", "é"));
  EXPECT_FALSE(TensorPatternMatches("*???", "éé"));
  EXPECT_TRUE(TensorPatternMatches("*??", "éé"));
  EXPECT_TRUE(TensorPatternMatches("layers.*.?", "layers.层.é"));
  // Literal characters and escapes work on whole characters.
  EXPECT_TRUE(TensorPatternMatches("\\é", "é"));
  EXPECT_TRUE(TensorPatternMatches("\\层?", "层x"));
  EXPECT_FALSE(TensorPatternMatches("é", "e"));
  // A byte that starts no well-formed UTF-8 sequence is one character by itself: a lone
  // continuation byte, a truncated sequence, an overlong form, a surrogate.
  // (The names are built in pieces: "\xA9b" would be one hex escape.)
  EXPECT_TRUE(TensorPatternMatches("a?b", std::string("a\xA9") + "b"));
  EXPECT_TRUE(TensorPatternMatches("a??b", std::string("a\xC3\xC3") + "b"))
      << "two truncated sequences";
  EXPECT_TRUE(TensorPatternMatches("a??b", std::string("a\xE4\xB8") + "b"))
      << "a 3-byte sequence cut short";
  EXPECT_FALSE(TensorPatternMatches("a?b", std::string("a\xE4\xB8") + "b"));
  EXPECT_TRUE(TensorPatternMatches("??", "\xC0\xAF")) << "overlong '/': two bytes, two characters";
  EXPECT_TRUE(TensorPatternMatches("???", "\xED\xA0\x80")) << "a surrogate: three characters";
  EXPECT_FALSE(TensorPatternMatches("\xC3?", "é"))
      << "a pattern's lone lead byte is not the first half of the name's é";
  EXPECT_TRUE(TensorPatternMatches("\xC3?", "\xC3x"));
}

TEST(TensorPatternTest, ExactPatternsMatchOnlyTheirNameAndBadPatternsAreNamed) {
  for (const std::string name : {"plain.weight", "odd*name", "q?", "back\\slash", "*?\\"}) {
    const std::string pattern = ExactTensorPattern(name);
    EXPECT_TRUE(ValidateTensorPattern(pattern).ok()) << pattern;
    EXPECT_TRUE(TensorPatternMatches(pattern, name)) << pattern;
    EXPECT_FALSE(TensorPatternMatches(pattern, name + "x")) << pattern;
  }
  EXPECT_FALSE(TensorPatternMatches(ExactTensorPattern("a*"), "abc"));
  EXPECT_EQ(ValidateTensorPattern("").code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ValidateTensorPattern("trailing\\").message().find("lone backslash"),
            std::string::npos);
  EXPECT_TRUE(ValidateTensorPattern("escaped\\\\").ok());
  EXPECT_NE(ValidateTensorPattern(std::string(1025, 'a')).message().find("longer than 1024"),
            std::string::npos);
}

ModelView Layout(const std::vector<std::string>& names) {
  static char byte = 0;
  ModelView model;
  for (const std::string& name : names) model.tensors.push_back({name, DType::kU8, {1}, &byte, 1});
  return model;
}

std::vector<std::string> Names(const ModelView& model) {
  std::vector<std::string> names;
  for (const TensorView& t : model.tensors) names.push_back(t.name);
  return names;
}

// The selection a server makes from a client's patterns (MatchTensors) follows the same rule.
TEST(SelectTensorsTest, SelectsNonAsciiNamesByCharacter) {
  const ModelView model = Layout({"层.0.权重", "层.1.权重", "层.10.权重", "é", "ée"});
  Result<ModelView> picked = SelectTensors(model, {"层.?.权重", "?"});
  ASSERT_TRUE(picked.ok()) << picked.status().ToString();
  EXPECT_EQ(Names(*picked), (std::vector<std::string>{"é", "层.0.权重", "层.1.权重"}))
      << "in name order, bytewise";
  EXPECT_EQ(MatchTensors(model, {"??????"}), (std::vector<size_t>{0, 1}))
      << "层.0.权重 is 6 characters (12 bytes)";
  EXPECT_EQ(MatchTensors(model, {"??"}), (std::vector<size_t>{4})) << "ée: 2 characters, 3 bytes";
  std::vector<size_t> unmatched;
  EXPECT_TRUE(MatchTensors(model, {"???"}, &unmatched).empty());
  EXPECT_EQ(unmatched, (std::vector<size_t>{0}));
}

TEST(SelectTensorsTest, SelectsInNameOrderWhateverTheStorageOrderAndNamesAPatternMatchingNothing) {
  const ModelView model =
      Layout({"lm_head.weight", "layers.1.w", "embed.weight", "layers.0.w", "layers.0.b"});
  Result<ModelView> picked = SelectTensors(model, {"layers.*", "embed.weight", "layers.0.w"});
  ASSERT_TRUE(picked.ok()) << picked.status().ToString();
  EXPECT_EQ(Names(*picked),
            (std::vector<std::string>{"embed.weight", "layers.0.b", "layers.0.w", "layers.1.w"}))
      << "each tensor once, in name order";
  Result<ModelView> typo = SelectTensors(model, {"layers.*", "lm_haed.weight"});
  ASSERT_FALSE(typo.ok());
  EXPECT_EQ(typo.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(typo.status().message().find("'lm_haed.weight' matches none of the 5 tensors"),
            std::string::npos)
      << typo.status().message();
  EXPECT_FALSE(SelectTensors(model, {"bad\\"}).ok());

  // What a server does with the same patterns: nothing is an error, unmatched ones are listed.
  std::vector<size_t> unmatched;
  EXPECT_EQ(MatchTensors(model, {"nothing.*", "layers.1.w", "absent"}, &unmatched),
            (std::vector<size_t>{1}));
  EXPECT_EQ(unmatched, (std::vector<size_t>{0, 2}));
}

// The server reuses the whole model's digests for a selection; whatever it reuses must be what
// hashing the selected tensors' own stream from scratch gives, chunk for chunk.
TEST(SubsetManifestTest, EqualsTheManifestOfTheSelectedTensorsBuiltFromScratch) {
  std::mt19937 random(7);
  const uint64_t kChunk = 4096;
  for (int trial = 0; trial < 40; ++trial) {
    // Sizes around the chunk size: empty, small ones that coalesce, exact, split, large.
    const std::vector<uint64_t> kinds = {0, 1, 100, 1000, 4095, 4096, 4097, 8192, 13000};
    const size_t count = 1 + random() % 30;
    std::vector<std::vector<unsigned char>> storage(count);
    ModelView model;
    for (size_t i = 0; i < count; ++i) {
      storage[i].resize(kinds[random() % kinds.size()]);
      for (auto& b : storage[i]) b = static_cast<unsigned char>(random());
      char name[16];
      std::snprintf(name, sizeof name, "t%02zu", (i * 7) % 31);  // storage order != name order
      model.tensors.push_back({name + std::to_string(i),
                               DType::kU8,
                               {static_cast<int64_t>(storage[i].size())},
                               storage[i].empty() ? nullptr : storage[i].data(),
                               storage[i].size()});
    }
    std::vector<std::string> patterns;
    for (const TensorView& t : model.tensors) {
      if (random() % 2) patterns.push_back(ExactTensorPattern(t.name));
    }
    if (patterns.empty()) patterns.push_back("*");
    const std::vector<size_t> subset = MatchTensors(model, patterns);
    ModelView selected;
    for (size_t i : subset) selected.tensors.push_back(model.tensors[i]);
    const Manifest expected = BuildManifest(selected, kChunk);
    const Manifest got = SubsetManifest(model, BuildManifest(model, kChunk), subset);
    EXPECT_EQ(got.table_digest, expected.table_digest) << trial;
    EXPECT_EQ(got.tensor_digests, expected.tensor_digests) << trial;
    EXPECT_EQ(got.chunk_digests, expected.chunk_digests) << trial;
    EXPECT_EQ(got.model_digest, expected.model_digest) << trial;
  }
}

TEST(SelectionDifferencesTest, NamesTensorsOnlyOneSideSelectsAndThoseThatDiffer) {
  wire::Reject reject;
  ModelView served = Layout({"a", "b", "c"});
  served.tensors[1].dtype = DType::kI8;
  ToWire(served, &reject);
  const std::string text =
      DescribeSelectionDifferences(reject.served_tensors(), Layout({"a", "b", "d"}));
  EXPECT_NE(text.find("3 tensors on the source, 3 here; 3 differ"), std::string::npos) << text;
  EXPECT_NE(text.find("source 'b' I8 [1] (1 bytes), this side 'b' U8 [1] (1 bytes)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("only the source selects 'c'"), std::string::npos) << text;
  EXPECT_NE(text.find("the source has no 'd'"), std::string::npos) << text;
  EXPECT_EQ(DescribeSelectionDifferences(reject.served_tensors(), served), "");
}

}  // namespace
}  // namespace netloader
