// PROTOCOL.md, section 8, states the protocol's limits and this implementation's defaults for a
// second implementation to follow; netloader/limits.h and the options structs are where they
// live in the code. These tests hold the two together, so that neither changes alone.

#include <gtest/gtest.h>

#include <string>

#include "netloader/client.h"
#include "netloader/fingerprint.h"
#include "netloader/limits.h"
#include "netloader/server.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

// Section 8 of PROTOCOL.md, up to the next section.
std::string LimitsSection() {
  const std::string spec = testing::ReadFile(std::string(NETLOADER_SOURCE_DIR) + "/PROTOCOL.md");
  const size_t begin = spec.find("## 8. Limits and defaults");
  const size_t end = spec.find("\n## 9.", begin);
  EXPECT_NE(begin, std::string::npos) << "PROTOCOL.md has no section 8";
  return begin == std::string::npos ? "" : spec.substr(begin, end - begin);
}

// The table row that starts with `what`, e.g. "| protocol version | 5 |".
std::string Row(const std::string& section, const std::string& what) {
  const size_t begin = section.find("| " + what + " |");
  if (begin == std::string::npos) return "(no row '" + what + "')";
  return section.substr(begin, section.find('\n', begin) - begin);
}

std::string Bytes(uint64_t bytes) {
  if (bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes >> 10) + " KiB";
}

std::string Seconds(std::chrono::milliseconds ms) {
  return std::to_string(ms.count() / 1000) + " s";
}

TEST(ProtocolLimitsTest, SectionEightStatesTheLimitsOfLimitsH) {
  const std::string s = LimitsSection();
  EXPECT_EQ(Row(s, "protocol version"),
            "| protocol version | " + std::to_string(kProtocolVersion) + " |");
  EXPECT_NE(Row(s, "largest message a server handles / ZeroMQ's cut-off on the server")
                .find(Bytes(kMaxServerMessageBytes) + " / " + Bytes(kServerCutoffBytes)),
            std::string::npos);
  EXPECT_NE(Row(s, "largest message a client must accept").find(Bytes(kMaxClientMessageBytes)),
            std::string::npos);
  EXPECT_NE(Row(s, "`chunk_bytes`").find("within [" + std::to_string(kMinChunkBytes) + ", 2^30]"),
            std::string::npos);
  EXPECT_EQ(kMaxChunkBytes, 1ull << 30);
  EXPECT_NE(Row(s, "fan-out limit (sessions before a Redirect) / redirects one load follows")
                .find("at most " + std::to_string(kMaxRedirects)),
            std::string::npos);
  const std::string heartbeat = Row(s, "heartbeat interval / timeout");
  EXPECT_NE(heartbeat.find("at most " + Seconds(kMaxHeartbeatInterval)), std::string::npos)
      << heartbeat;
  EXPECT_NE(heartbeat.find("never gives up in less than " + Seconds(kMinHeartbeatTimeout)),
            std::string::npos)
      << heartbeat;
  EXPECT_NE(Row(s, "ranges per Request (this implementation)")
                .find("at most " + std::to_string(kMaxRangesPerRequest / 1000) + "," +
                      std::to_string(kMaxRangesPerRequest % 1000 + 1000).substr(1)),
            std::string::npos);
}

TEST(ProtocolLimitsTest, SectionEightStatesTheOptionsDefaults) {
  const std::string s = LimitsSection();
  const ServerOptions server;
  const ClientOptions client;
  EXPECT_NE(Row(s, "`chunk_bytes`").find(Bytes(server.chunk_bytes) + " by default"),
            std::string::npos);
  EXPECT_NE(
      Row(s, "messages in flight (`window`)").find(std::to_string(server.window) + " by default"),
      std::string::npos);
  EXPECT_EQ(server.window, client.window);
  EXPECT_NE(Row(s, "fan-out limit (sessions before a Redirect) / redirects one load follows")
                .find(std::to_string(server.fanout) + " by default"),
            std::string::npos);
  EXPECT_NE(Row(s, "heartbeat interval / timeout")
                .find(Seconds(server.heartbeat_timeout) + " by default"),
            std::string::npos);
  EXPECT_EQ(client.heartbeat_interval, kMaxHeartbeatInterval);
  EXPECT_NE(Row(s, "a client's register deadline / busy retry period")
                .find(Seconds(client.register_timeout) + " / " + Seconds(client.busy_timeout)),
            std::string::npos);
  EXPECT_NE(Row(s, "the server's connect deadline / stall deadline / wait for a Request or Done")
                .find(Seconds(server.connect_timeout) + " / " + Seconds(server.stall_timeout) +
                      " / " + Seconds(server.done_timeout)),
            std::string::npos);
}

}  // namespace
}  // namespace netloader
