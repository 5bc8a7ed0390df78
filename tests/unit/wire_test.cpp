#include "netloader/src/protocol/wire.h"

#include <gtest/gtest.h>

namespace netloader {
namespace {

TEST(WireTest, RoundTripsARegister) {
  wire::Envelope e;
  Fingerprint fp;
  fp.table_digest = "d";
  fp.partition.pp_size = 3;
  fp.partition.pp_rank = 2;
  ToWire(fp, e.mutable_register_()->mutable_fingerprint());
  const std::string bytes = Encode(e);
  Result<wire::Envelope> back = Decode(bytes.data(), bytes.size(), kMaxServerMessageBytes);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  Fingerprint decoded = FromWire(back->register_().fingerprint());
  EXPECT_TRUE(CompareFingerprints(fp, decoded).empty());
}

TEST(WireTest, GarbageIsAProtocolMismatch) {
  const std::string garbage = "\xff\xff\xff\xff garbage";
  Result<wire::Envelope> r = Decode(garbage.data(), garbage.size(), kMaxServerMessageBytes);
  EXPECT_EQ(r.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_NE(r.status().message().find("not a netloader message"), std::string::npos);
}

TEST(WireTest, OversizedMessageIsRefusedBeforeParsing) {
  const std::string big(kMaxServerMessageBytes + 1, '\0');
  Result<wire::Envelope> r = Decode(big.data(), big.size(), kMaxServerMessageBytes);
  EXPECT_EQ(r.status().code(), StatusCode::kProtocolMismatch) << "not a message of the protocol";
  EXPECT_NE(r.status().message().find("exceeds the limit"), std::string::npos);
}

TEST(WireTest, AnEmptyMessageIsNamedAsEmpty) {
  Result<wire::Envelope> r = Decode("", 0, kMaxServerMessageBytes);
  EXPECT_EQ(r.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_NE(r.status().message().find("empty message"), std::string::npos) << r.status().message();
}

TEST(WireTest, AnotherProtocolVersionIsNamed) {
  wire::Envelope e;
  e.mutable_done()->set_session_id(1);
  e.set_protocol_version(kProtocolVersion + 1);
  const std::string bytes = e.SerializeAsString();
  Result<wire::Envelope> r = Decode(bytes.data(), bytes.size(), kMaxServerMessageBytes);
  EXPECT_EQ(r.status().code(), StatusCode::kProtocolMismatch);
  const std::string expected = "protocol version " + std::to_string(kProtocolVersion + 1) +
                               ", this build speaks " + std::to_string(kProtocolVersion);
  EXPECT_NE(r.status().message().find(expected), std::string::npos) << r.status().message();
}

TEST(WireTest, MessageWithoutBodyIsRefused) {
  wire::Envelope e;
  const std::string bytes = Encode(e);
  EXPECT_EQ(Decode(bytes.data(), bytes.size(), kMaxServerMessageBytes).status().code(),
            StatusCode::kProtocolMismatch);
}

TEST(WireTest, ManifestWithAChunkSizeOutOfRangeIsRefused) {
  wire::Manifest m;
  m.set_chunk_bytes(10);
  Result<Manifest> r = FromWire(m);
  EXPECT_EQ(r.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_NE(r.status().message().find("chunk size 10"), std::string::npos);
}

}  // namespace
}  // namespace netloader
