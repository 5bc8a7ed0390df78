#include "netloader/safetensors.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include "netloader/src/base/host_memory.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

using testing::TempDir;

std::string Prefixed(const std::string& header) {
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
  return bytes + header;
}

// A file with the given header JSON followed by `data_bytes` zero bytes.
std::string MakeFile(const TempDir& dir, const std::string& header, size_t data_bytes) {
  const std::string path = dir / "t.safetensors";
  testing::WriteFile(path, Prefixed(header) + std::string(data_bytes, '\0'));
  return path;
}

Status LayoutError(const std::string& path) {
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  return layout.ok() ? Status::Ok() : layout.status();
}

TEST(SafetensorsTest, ReadsHuggingFaceFileWithMetadataAndPadding) {
  Result<CheckpointLayout> layout =
      ReadCheckpointLayout(std::string(NETLOADER_TEST_DATA) + "/small-test.safetensors");
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  ASSERT_EQ(layout->shards.size(), 1u);
  const ShardLayout& shard = layout->shards[0];
  EXPECT_EQ(shard.metadata.at("version"), "1.0");
  EXPECT_EQ(shard.metadata.at("git_tag"), "v1.45");
  ASSERT_EQ(shard.tensors.size(), 4u);
  EXPECT_EQ(shard.tensors[0].name, "fc1.bias");
  EXPECT_EQ(shard.tensors[1].name, "fc1.weight");
  EXPECT_EQ(shard.tensors[1].shape, (std::vector<int64_t>{20, 10}));
  EXPECT_EQ(shard.tensors[1].size_bytes, 800u);
  EXPECT_EQ(shard.tensors[0].dtype, DType::kF32);
}

TEST(SafetensorsTest, ReadsTinygradFileAndItsData) {
  const std::string path = std::string(NETLOADER_TEST_DATA) + "/tinygrad-mnist.safetensors";
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  ASSERT_EQ(layout->tensor_count(), 2u);
  EXPECT_EQ(layout->shards[0].tensors[0].name, "l1.weight");
  EXPECT_EQ(layout->shards[0].tensors[0].shape, (std::vector<int64_t>{128, 784}));
  Result<HostModel> model = HostModel::Load(*layout);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  // The loaded bytes are exactly the file's data section.
  const std::string file = testing::ReadFile(path);
  const TensorSpec& l2 = layout->shards[0].tensors[1];
  EXPECT_EQ(std::memcmp(model->view().tensors[1].data, file.data() + l2.file_offset, l2.size_bytes),
            0);
}

TEST(SafetensorsTest, WriterOutputReadsBackIdenticallyForEveryDType) {
  TempDir dir;
  std::mt19937 rng(7);
  std::vector<std::vector<unsigned char>> buffers;
  std::vector<TensorView> tensors;
  const DType all[] = {DType::kBool, DType::kU8,  DType::kI8,  DType::kF8E5M2, DType::kF8E4M3,
                       DType::kI16,  DType::kU16, DType::kF16, DType::kBF16,   DType::kI32,
                       DType::kU32,  DType::kF32, DType::kI64, DType::kU64,    DType::kF64};
  for (DType dtype : all) {
    const std::vector<int64_t> shape = {3, 5};
    buffers.emplace_back(15 * DTypeSize(dtype));
    for (auto& b : buffers.back()) b = static_cast<unsigned char>(rng());
    tensors.push_back({"t." + std::string(DTypeName(dtype)), dtype, shape, buffers.back().data(),
                       buffers.back().size()});
  }
  tensors.push_back({"scalar", DType::kF32, {}, buffers[0].data(), 4});
  tensors.push_back({"empty", DType::kBF16, {0, 7}, nullptr, 0});
  const std::string path = dir / "all.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());

  const std::string file = testing::ReadFile(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data must start 8-byte aligned";
  EXPECT_EQ(file.substr(8, 14), "{\"__metadata__") << "metadata comes first";

  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_EQ(layout->shards[0].metadata.at("format"), "pt");
  Result<HostModel> model = HostModel::Load(*layout);
  ASSERT_TRUE(model.ok());
  ASSERT_EQ(model->view().tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& got = model->view().tensors[i];
    EXPECT_EQ(got.name, tensors[i].name) << "storage order is write order";
    EXPECT_EQ(got.dtype, tensors[i].dtype);
    EXPECT_EQ(got.shape, tensors[i].shape);
    ASSERT_EQ(got.size_bytes, tensors[i].size_bytes);
    if (got.size_bytes) {
      EXPECT_EQ(std::memcmp(got.data, tensors[i].data, got.size_bytes), 0);
    }
  }
}

TEST(SafetensorsTest, ShardedCheckpointRoundTripsThroughIndex) {
  TempDir dir;
  std::vector<float> a(10, 1.5f), b(6, -2.0f);
  ASSERT_TRUE(WriteSafetensors(dir / "model-00001-of-00002.safetensors",
                               {{"a", DType::kF32, {10}, a.data(), 40}})
                  .ok());
  ASSERT_TRUE(WriteSafetensors(dir / "model-00002-of-00002.safetensors",
                               {{"b", DType::kF32, {2, 3}, b.data(), 24}})
                  .ok());
  testing::WriteFile(dir / "model.safetensors.index.json",
                     R"({"metadata": {"total_size": 64}, "weight_map": {
                         "b": "model-00002-of-00002.safetensors",
                         "a": "model-00001-of-00002.safetensors"}})");
  Result<CheckpointLayout> layout = ReadCheckpointLayout(dir.path());
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_TRUE(layout->indexed);
  ASSERT_EQ(layout->shards.size(), 2u);
  EXPECT_EQ(layout->shards[0].tensors[0].name, "a") << "shards in file-name order";
  Result<HostModel> model = HostModel::Load(*layout);
  ASSERT_TRUE(model.ok());

  TempDir out;
  ASSERT_TRUE(WriteCheckpoint(out.path(), *layout, model->view()).ok());
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    EXPECT_EQ(testing::ReadFile(out / f), testing::ReadFile(dir / f)) << f;
  }
  Result<CheckpointLayout> again = ReadCheckpointLayout(out.path());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->tensor_count(), 2u);
}

TEST(SafetensorsTest, ReadTensorsFillsAViewAndNamesWhatDoesNotMatch) {
  TempDir dir;
  std::vector<float> a(10, 1.5f), b(6, -2.0f);
  const std::string path = dir / "m.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {10}, a.data(), 40},
                                      {"b", DType::kF32, {2, 3}, b.data(), 24}})
                  .ok());
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  std::vector<float> a2(10), b2(6);
  ModelView view{
      {{"a", DType::kF32, {10}, a2.data(), 40}, {"b", DType::kF32, {2, 3}, b2.data(), 24}}};
  ASSERT_TRUE(ReadTensors(*layout, view).ok());
  EXPECT_EQ(a2, a);
  EXPECT_EQ(b2, b);
  // A view in another order is refused, naming the tensor.
  std::swap(view.tensors[0], view.tensors[1]);
  Status swapped = ReadTensors(*layout, view);
  EXPECT_EQ(swapped.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(swapped.message().find("tensor 'a' of " + path + " is not the next tensor given ('b')"),
            std::string::npos)
      << swapped.message();
  // A file cut short is an error naming it, not a short read.
  std::swap(view.tensors[0], view.tensors[1]);
  const std::string whole = testing::ReadFile(path);
  testing::WriteFile(path, whole.substr(0, whole.size() - 8));
  Status cut = ReadTensors(*layout, view);
  EXPECT_FALSE(cut.ok());
  EXPECT_NE(cut.message().find(path), std::string::npos) << cut.message();
}

// Tensors larger than a read piece (64 MiB) are read in pieces by several threads, from two
// shards at odd offsets: every byte lands where it belongs; a cut second shard fails, naming it.
TEST(SafetensorsTest, ALargeShardedModelIsReadInParallelPiecesByteForByte) {
  TempDir dir;
  std::vector<uint8_t> big((150u << 20) + 3), small(1000), tail(70u << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  for (size_t i = 0; i < small.size(); ++i) small[i] = static_cast<uint8_t>(i ^ 0x5a);
  for (size_t i = 0; i < tail.size(); ++i) tail[i] = static_cast<uint8_t>(i * 40503u >> 7);
  ASSERT_TRUE(WriteSafetensors(
                  dir / "model-00001-of-00002.safetensors",
                  {{"small", DType::kU8, {1000}, small.data(), small.size()},
                   {"big", DType::kU8, {static_cast<int64_t>(big.size())}, big.data(), big.size()}})
                  .ok());
  ASSERT_TRUE(
      WriteSafetensors(
          dir / "model-00002-of-00002.safetensors",
          {{"tail", DType::kU8, {static_cast<int64_t>(tail.size())}, tail.data(), tail.size()}})
          .ok());
  Result<CheckpointLayout> layout = ReadCheckpointLayout(dir.path());
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  Result<HostModel> model = HostModel::Load(*layout);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const auto& t = model->view().tensors;
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(std::memcmp(t[0].data, small.data(), small.size()), 0);
  EXPECT_EQ(std::memcmp(t[1].data, big.data(), big.size()), 0);
  EXPECT_EQ(std::memcmp(t[2].data, tail.data(), tail.size()), 0);
  const std::string second = dir / "model-00002-of-00002.safetensors";
  ASSERT_EQ(truncate(second.c_str(), static_cast<off_t>(std::filesystem::file_size(second) - 1)),
            0);
  Result<HostModel> cut = HostModel::Load(*layout);
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.status().message().find(second), std::string::npos) << cut.status().ToString();
}

TEST(SafetensorsTest, IndexThatMapsATensorToTheWrongFileIsRejected) {
  TempDir dir;
  float x = 1;
  ASSERT_TRUE(WriteSafetensors(dir / "s1.safetensors", {{"a", DType::kF32, {}, &x, 4}}).ok());
  testing::WriteFile(dir / "model.safetensors.index.json",
                     R"({"weight_map": {"a": "s1.safetensors", "ghost": "s1.safetensors"}})");
  Status status = LayoutError(dir.path());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("weight_map lists 2 tensors"), std::string::npos)
      << status.message();
}

// Files other tools write, each accepted as the reference reader accepts it.

TEST(SafetensorsTest, NullMetadataAsMlxWritesItMeansNoMetadata) {
  TempDir dir;
  const std::string path = MakeFile(
      dir, R"({"__metadata__":null,"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 4);
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_TRUE(layout->shards[0].metadata.empty());
  ASSERT_EQ(layout->tensor_count(), 1u);
  EXPECT_EQ(layout->shards[0].tensors[0].name, "w");
}

TEST(SafetensorsTest, EmptyMetadataObjectIsAccepted) {
  TempDir dir;
  const std::string path = MakeFile(
      dir, R"({"__metadata__":{},"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2);
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_TRUE(layout->shards[0].metadata.empty());
}

// The header lists tensors in one order (JSON keys), the data lies in another: storage order is
// the data's. The header is not padded to 8 bytes, so the data starts at an odd offset.
TEST(SafetensorsTest, DataOutOfHeaderOrderInAnUnpaddedFileIsReadInDataOrder) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[5,8]},)"
                             R"("z":{"dtype":"U8","shape":[5],"data_offsets":[0,5]}})";
  ASSERT_NE((8 + header.size()) % 8, 0u) << "the test needs an unpadded header";
  const std::string path = dir / "t.safetensors";
  testing::WriteFile(path, Prefixed(header) + "ZZZZZAAA");
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  ASSERT_EQ(layout->tensor_count(), 2u);
  EXPECT_EQ(layout->shards[0].tensors[0].name, "z");
  EXPECT_EQ(layout->shards[0].tensors[1].name, "a");
  Result<HostModel> model = HostModel::Load(*layout);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ(std::string(static_cast<const char*>(model->view().tensors[0].data), 5), "ZZZZZ");
  EXPECT_EQ(std::string(static_cast<const char*>(model->view().tensors[1].data), 3), "AAA");
}

// Zero-byte tensors lying at one offset are ordered by name, whatever order the header gives:
// the tensor table, and so its digest, must not depend on which reader built it.
TEST(SafetensorsTest, ZeroByteTensorsAtOneOffsetAreOrderedByName) {
  TempDir dir;
  const std::string path = MakeFile(dir,
                                    R"({"m":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                                    R"("b":{"dtype":"U8","shape":[0,3],"data_offsets":[4,4]},)"
                                    R"("k":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                    R"("y":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})",
                                    4);
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  std::vector<std::string> names;
  for (const TensorSpec& t : layout->shards[0].tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"y", "k", "b", "m"}));
}

// A layout file: a safetensors header without its data, as a user ships a model's layout to
// the machines that will load it. Read for the layout it is accepted; as a checkpoint it is not.
TEST(SafetensorsTest, AHeaderOnlyLayoutFileIsALayoutButNotACheckpoint) {
  TempDir dir;
  const std::string path =
      MakeFile(dir, R"({"w":{"dtype":"BF16","shape":[64,32],"data_offsets":[0,4096]}})", 0);
  Result<CheckpointLayout> layout = ReadCheckpointLayout(path, LayoutRead::kHeadersOnly);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_EQ(layout->total_bytes(), 4096u);
  EXPECT_EQ(layout->shards[0].tensors[0].shape, (std::vector<int64_t>{64, 32}));
  Status as_checkpoint = LayoutError(path);
  EXPECT_EQ(as_checkpoint.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(as_checkpoint.message().find("run past the 0 data bytes"), std::string::npos)
      << as_checkpoint.message();
  // Still a well-formed header: sizes and overlaps are checked all the same.
  const std::string bad =
      MakeFile(dir, R"({"w":{"dtype":"BF16","shape":[64,32],"data_offsets":[0,4000]}})", 0);
  Result<CheckpointLayout> refused = ReadCheckpointLayout(bad, LayoutRead::kHeadersOnly);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("do not match shape x dtype"), std::string::npos)
      << refused.status().message();
}

struct Malformed {
  const char* what;
  std::string header;  // empty: use `raw` as the whole file
  size_t data_bytes;
  const char* expected;  // substring of the error
  std::string raw;
};

void PrintTo(const Malformed& m, std::ostream* os) { *os << m.what; }

class MalformedHeaderTest : public ::testing::TestWithParam<Malformed> {};

TEST_P(MalformedHeaderTest, IsRejectedWithAPreciseError) {
  TempDir dir;
  const Malformed& m = GetParam();
  std::string path;
  if (m.header.empty()) {
    path = dir / "raw.safetensors";
    testing::WriteFile(path, m.raw);
  } else {
    path = MakeFile(dir, m.header, m.data_bytes);
  }
  Status status = LayoutError(path);
  ASSERT_FALSE(status.ok()) << m.what;
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find(m.expected), std::string::npos)
      << m.what << ": got " << status.message();
  EXPECT_NE(status.message().find(path), std::string::npos) << "the error names the file";
}

std::string Len(uint64_t n) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
  return bytes;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MalformedHeaderTest,
    ::testing::Values(
        Malformed{"too short", "", 0, "shorter than the 8-byte", "abc"},
        Malformed{"length beyond file", "", 0, "runs past the end", Len(1000) + "{}"},
        Malformed{"absurd length", "", 0, "exceeds the 100 MiB limit", Len(1ull << 40) + "{}"},
        Malformed{"bad json", "{\"a\": [1, 2", 0, "not valid JSON", ""},
        Malformed{"not an object", "[1,2,3]", 0, "not a JSON object", ""},
        Malformed{"unknown dtype", R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", 1,
                  "unknown dtype 'Q7'", ""},
        Malformed{"missing dtype", R"({"a":{"shape":[1],"data_offsets":[0,1]}})", 1,
                  "missing or non-string dtype", ""},
        Malformed{"negative dim", R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1,
                  "non-negative integers", ""},
        Malformed{"offsets out of bounds",
                  R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", 4,
                  "run past the 4 data bytes", ""},
        Malformed{"begin after end", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", 4,
                  "begin > end", ""},
        Malformed{"size mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
                  "do not match shape x dtype", ""},
        Malformed{"overlap",
                  R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
                      "b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                  8, "overlaps", ""},
        Malformed{
            "shape overflow",
            R"({"a":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8,
            "overflows", ""},
        Malformed{"bad metadata", R"({"__metadata__":{"k":5}})", 0, "is not a string", ""},
        Malformed{"metadata not an object", R"({"__metadata__":[1]})", 0,
                  "__metadata__ is not an object or null", ""},
        Malformed{"offsets wrong type", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":"0-1"}})",
                  1, "two non-negative integers", ""}),
    [](const ::testing::TestParamInfo<Malformed>& param) {
      std::string name = param.param.what;
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

// Tensor memory and staging rings: zeroed, every page already present (a receive must not pay
// first-touch faults chunk by chunk), and 2 MiB-aligned from 2 MiB up so huge pages can back it.
TEST(HostMemoryTest, IsZeroedPresentAndHugePageAligned) {
  EXPECT_EQ(MapHostMemory(0), nullptr);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (size_t bytes : {size_t{1}, page + 1, size_t{2} << 20, (size_t{5} << 20) + 3}) {
    auto* memory = static_cast<unsigned char*>(MapHostMemory(bytes));
    ASSERT_NE(memory, nullptr) << bytes;
    if (bytes >= (2u << 20)) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(memory) % (2u << 20), 0u);
    }
    std::vector<unsigned char> resident((bytes + page - 1) / page);
    ASSERT_EQ(mincore(memory, bytes, resident.data()), 0);
    for (size_t p = 0; p < resident.size(); ++p) ASSERT_TRUE(resident[p] & 1) << "page " << p;
    EXPECT_EQ(std::count(memory, memory + bytes, 0), static_cast<std::ptrdiff_t>(bytes));
    std::memset(memory, 0xab, bytes);  // writable to the last byte
    UnmapHostMemory(memory, bytes);
  }
}

TEST(SafetensorsTest, MissingPathIsNotFound) {
  EXPECT_EQ(LayoutError("/nonexistent/model.safetensors").code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace netloader
