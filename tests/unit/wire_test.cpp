#include "netloader/src/protocol/wire.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

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

wire::Request RequestOf(std::initializer_list<std::pair<uint64_t, uint64_t>> ranges) {
  wire::Request request;
  for (const auto& [first, count] : ranges) {
    wire::ChunkRange* range = request.add_ranges();
    range->set_first(first);
    range->set_count(count);
  }
  return request;
}

std::string RequestError(const wire::Request& request, size_t chunk_count) {
  Result<std::vector<size_t>> chunks = FromWire(request, chunk_count);
  EXPECT_EQ(chunks.status().code(), StatusCode::kInvalidArgument);
  return chunks.status().message();
}

TEST(WireTest, ARequestDecodesToItsChunksInTheOrderAsked) {
  Result<std::vector<size_t>> chunks = FromWire(RequestOf({{5, 2}, {0, 3}, {1, 1}}), 7);
  ASSERT_TRUE(chunks.ok()) << chunks.status().ToString();
  EXPECT_EQ(*chunks, (std::vector<size_t>{5, 6, 0, 1, 2, 1}))
      << "ranges need not ascend, and may name a chunk again";
  chunks = FromWire(RequestOf({{0, 7}}), 7);
  ASSERT_TRUE(chunks.ok());
  EXPECT_EQ(chunks->size(), 7u);
  wire::Request back;
  ToWire(std::vector<size_t>{2, 3, 4, 6, 0}, &back);
  ASSERT_EQ(back.ranges_size(), 3);
  EXPECT_EQ(back.ranges(0).first(), 2u);
  EXPECT_EQ(back.ranges(0).count(), 3u);
  EXPECT_EQ(*FromWire(back, 7), (std::vector<size_t>{2, 3, 4, 6, 0}));
}

// PROTOCOL.md, section 4.5: a bad Request is refused naming the one problem, with its values.
TEST(WireTest, ABadRequestNamesTheOneProblemWithItsValues) {
  EXPECT_EQ(RequestError(RequestOf({}), 7),
            "the Request has no range; it must name at least one chunk of the 7 chunks of the "
            "stream (0 to 6)");
  EXPECT_EQ(RequestError(RequestOf({{0, 1}, {3, 0}}), 7),
            "Request range 1 {first 3, count 0} is empty (count 0)");
  EXPECT_EQ(RequestError(RequestOf({{7, 1}}), 7),
            "Request range 0 {first 7, count 1} starts outside the 7 chunks of the stream (0 to "
            "6)");
  EXPECT_EQ(RequestError(RequestOf({{5, 4}}), 7),
            "Request range 0 {first 5, count 4} reaches chunk 8, outside the 7 chunks of the "
            "stream (0 to 6)");
  EXPECT_EQ(RequestError(RequestOf({{1, UINT64_MAX}}), 7),
            "Request range 0 {first 1, count 18446744073709551615} reaches chunk "
            "18446744073709551615, outside the 7 chunks of the stream (0 to 6)")
      << "no overflow";
  EXPECT_EQ(RequestError(RequestOf({{0, 5}, {2, 3}}), 7),
            "Request range 1 {first 2, count 3} brings the Request to 8 chunks, more than the 7 "
            "the stream has (a Request may name a chunk twice, but not more chunks in all than "
            "the stream has)");
}

// A stream of no chunks (every tensor of 0 bytes) has no valid Request: a client sends none
// (PROTOCOL.md, section 4.5).
TEST(WireTest, AStreamOfNoChunksHasNoValidRequest) {
  EXPECT_EQ(RequestError(RequestOf({}), 0),
            "the Request has no range; it must name at least one chunk of the stream, which has "
            "no chunks");
  EXPECT_EQ(RequestError(RequestOf({{0, 1}}), 0),
            "Request range 0 {first 0, count 1} starts outside the stream, which has no chunks");
}

}  // namespace
}  // namespace netloader
