#include "netloader/fingerprint.h"

#include <gtest/gtest.h>

namespace netloader {
namespace {

ModelView TwoTensors() {
  static float a[6], b[2];
  return ModelView{{{"a", DType::kF32, {2, 3}, a, 24}, {"b", DType::kF32, {2}, b, 8}}};
}

Fingerprint Served() {
  Partition p;
  p.tp_size = 4;
  p.tp_rank = 1;
  p.pp_size = 2;
  p.pp_rank = 0;
  p.layout_key = "experts:0-7";
  return MakeFingerprint(TwoTensors(), "org/model@rev1", p);
}

TEST(FingerprintTest, IdenticalFingerprintsHaveNoDiffs) {
  EXPECT_TRUE(CompareFingerprints(Served(), Served()).empty());
}

struct FieldCase {
  const char* field;
  void (*mutate)(Fingerprint&);
  std::string server_value;  // empty: not checked
  const char* client_value;
};

void PrintTo(const FieldCase& c, std::ostream* os) { *os << c.field; }

class SingleFieldMismatchTest : public ::testing::TestWithParam<FieldCase> {};

TEST_P(SingleFieldMismatchTest, IsRefusedNamingExactlyThatFieldAndBothValues) {
  Fingerprint client = Served();
  GetParam().mutate(client);
  std::vector<FieldDiff> diffs = CompareFingerprints(Served(), client);
  ASSERT_EQ(diffs.size(), 1u) << DescribeDiffs(diffs);
  EXPECT_EQ(diffs[0].field, GetParam().field);
  if (!GetParam().server_value.empty()) {
    EXPECT_EQ(diffs[0].server_value, GetParam().server_value);
  }
  if (GetParam().client_value) {
    EXPECT_EQ(diffs[0].client_value, GetParam().client_value);
  }
  EXPECT_NE(DescribeDiffs(diffs).find(GetParam().field), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Fields, SingleFieldMismatchTest,
    ::testing::Values(
        FieldCase{"protocol_version", [](Fingerprint& f) { f.protocol_version = 99; },
                  std::to_string(kProtocolVersion), "99"},
        FieldCase{"model_id", [](Fingerprint& f) { f.model_id = "org/model@rev2"; },
                  "org/model@rev1", "org/model@rev2"},
        FieldCase{"table_digest",
                  [](Fingerprint& f) {
                    ModelView m = TwoTensors();
                    m.tensors[1].dtype = DType::kI32;
                    f.table_digest = TableDigest(m);
                  },
                  "", nullptr},
        FieldCase{"partition.tp_size", [](Fingerprint& f) { f.partition.tp_size = 8; }, "4", "8"},
        FieldCase{"partition.tp_rank", [](Fingerprint& f) { f.partition.tp_rank = 3; }, "1", "3"},
        FieldCase{"partition.pp_size", [](Fingerprint& f) { f.partition.pp_size = 1; }, "2", "1"},
        FieldCase{"partition.pp_rank", [](Fingerprint& f) { f.partition.pp_rank = 1; }, "0", "1"},
        FieldCase{"partition.layout_key", [](Fingerprint& f) { f.partition.layout_key = "x"; },
                  "experts:0-7", "x"}),
    [](const ::testing::TestParamInfo<FieldCase>& param) {
      std::string name = param.param.field;
      for (char& c : name) c = c == '.' ? '_' : c;
      return name;
    });

TEST(FingerprintTest, ClientWithoutModelIdIsNotCheckedForIt) {
  Fingerprint client = Served();
  client.model_id.clear();
  EXPECT_TRUE(CompareFingerprints(Served(), client).empty());
}

TEST(FingerprintTest, EveryDifferingFieldIsListed) {
  Fingerprint client = Served();
  client.partition.tp_size = 2;
  client.partition.tp_rank = 0;
  client.model_id = "other";
  EXPECT_EQ(CompareFingerprints(Served(), client).size(), 3u);
}

TEST(FingerprintTest, TableDigestSeesOrderNamesShapesAndSizes) {
  const std::string base = TableDigest(TwoTensors());
  ModelView swapped = TwoTensors();
  std::swap(swapped.tensors[0], swapped.tensors[1]);
  EXPECT_NE(TableDigest(swapped), base);
  ModelView renamed = TwoTensors();
  renamed.tensors[0].name = "c";
  EXPECT_NE(TableDigest(renamed), base);
  ModelView reshaped = TwoTensors();
  reshaped.tensors[0].shape = {3, 2};
  EXPECT_NE(TableDigest(reshaped), base);
  // The digest depends only on the table, not on where the data lives.
  ModelView moved = TwoTensors();
  static float elsewhere[6];
  moved.tensors[0].data = elsewhere;
  EXPECT_EQ(TableDigest(moved), base);
}

}  // namespace
}  // namespace netloader
