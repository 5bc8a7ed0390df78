// Prometheus metrics of the real CLIs (--metrics-listen) after a real load over MPI: scraped
// over HTTP, checked by Prometheus' own promtool (Debian's `prometheus` package), and their
// values checked against what happened.

#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <regex>

#include "tests/support/test_util.h"

namespace netloader {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::TempDir;

std::string Bin(const std::string& name) { return testing::BinDir() + "/" + name; }

// The metrics URL `child` printed ("... metrics at http://HOST:PORT/metrics"), "" if none.
std::string MetricsUrl(Child& child) {
  std::smatch match;
  std::string url;
  testing::WaitFor(
      [&] {
        const std::string text = child.Stderr();
        if (std::regex_search(text, match, std::regex("metrics at (http://[0-9.:]+/metrics)"))) {
          url = match[1];
        }
        return !url.empty() || !child.Running();
      },
      30s);
  return url;
}

// The value of `series` (a metric name with its labels, as exposed) in `text`; -1 if absent.
double Value(const std::string& text, const std::string& series) {
  const std::string line_start = series + " ";
  for (size_t at = 0; at < text.size();) {
    const size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    if (line.compare(0, line_start.size(), line_start) == 0) {
      return std::strtod(line.c_str() + line_start.size(), nullptr);
    }
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return -1;
}

// promtool's verdict on `text` as an exposition: "" when it passes, else what it said.
std::string PromtoolProblems(const TempDir& tmp, const std::string& name, const std::string& text) {
  testing::WriteFile(tmp / (name + ".prom"), text);
  Child check({"/bin/sh", "-c", "promtool check metrics < " + tmp / (name + ".prom")},
              tmp / (name + "-promtool"));
  const int code = check.Wait(60s);
  return code == 0 ? "" : "exit " + std::to_string(code) + ": " + check.Stdout() + check.Stderr();
}

// A server and a relay loading from it, both with --metrics-listen: what each exposes passes
// promtool and counts the load exactly: the bytes the server sent are the bytes the relay
// received, one session served, one load OK with its duration, and the build.
TEST(MetricsTest, AServerAndARelayExposeWhatTheLoadDidAndPassPromtool) {
  TempDir tmp;
  Child gen({Bin("netloader-make-checkpoint"), "--output", tmp / "model", "--tensors", "30",
             "--size-mib", "16", "--seed", "79"},
            tmp / "gen");
  ASSERT_EQ(gen.Wait(60s), 0) << gen.Stderr();
  Child server(
      {Bin("netloader-server"), "--model", tmp / "model", "--listen", "tcp://127.0.0.1:0",
       "--endpoint-file", tmp / "endpoint", "--mpi-helpers", "--metrics-listen", "127.0.0.1:0"},
      tmp / "server");
  const std::string endpoint = testing::WaitForLine(tmp / "endpoint", 30s);
  ASSERT_FALSE(endpoint.empty()) << server.Stderr();
  const std::string server_metrics = MetricsUrl(server);
  ASSERT_FALSE(server_metrics.empty()) << server.Stderr();

  // The relay stays up after its load (--serve), so its metrics can be read.
  Child relay({Bin("netloader-client"), "--model", tmp / "model", "--source", endpoint,
               "--verify-only", "--serve", "tcp://127.0.0.1:0", "--mpi-helpers", "--metrics-listen",
               "127.0.0.1:0", "--json"},
              tmp / "relay");
  const std::string relay_metrics = MetricsUrl(relay);
  ASSERT_FALSE(relay_metrics.empty()) << relay.Stderr();
  nlohmann::json summary;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        for (const nlohmann::json& line : testing::JsonLines(relay.Stdout())) {
          if (line.contains("ok")) summary = line;
        }
        return !summary.is_null() || !relay.Running();
      },
      120s));
  ASSERT_EQ(summary.value("ok", false), true) << relay.Stderr();
  const double bytes = summary["bytes"].get<double>();

  // The server counts a session once it retired it (within about 100 ms of its end).
  std::string at_server;
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        at_server = testing::HttpGet(server_metrics, 10s);
        return Value(at_server, "netloader_sessions_total{result=\"served\"}") == 1;
      },
      30s))
      << at_server;
  const std::string at_relay = testing::HttpGet(relay_metrics, 10s);
  ASSERT_FALSE(at_relay.empty());
  EXPECT_EQ(PromtoolProblems(tmp, "server", at_server), "");
  EXPECT_EQ(PromtoolProblems(tmp, "relay", at_relay), "");

  EXPECT_EQ(Value(at_server, "netloader_sent_bytes_total{role=\"server\"}"), bytes) << at_server;
  EXPECT_EQ(Value(at_server, "netloader_sessions_total{result=\"failed\"}"), 0);
  EXPECT_EQ(Value(at_server, "netloader_chunk_verification_failures_total"), 0);
  EXPECT_NE(at_server.find("netloader_build_info{"), std::string::npos) << at_server;
  EXPECT_EQ(Value(at_relay, "netloader_received_bytes_total"), bytes) << at_relay;
  EXPECT_EQ(Value(at_relay, "netloader_loads_total{result=\"OK\"}"), 1) << at_relay;
  EXPECT_EQ(Value(at_relay, "netloader_load_duration_seconds_count"), 1) << at_relay;
  EXPECT_GT(Value(at_relay, "netloader_load_duration_seconds_sum"), 0);
  EXPECT_EQ(Value(at_relay, "netloader_load_phase_duration_seconds_count{phase=\"transfer\"}"), 1);
  EXPECT_EQ(Value(at_relay, "netloader_sent_bytes_total{role=\"relay\"}"), 0);

  relay.Signal(SIGTERM);
  EXPECT_EQ(relay.Wait(60s), 0) << relay.Stderr();
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(60s), 0) << server.Stderr();
}

// A metrics port that is taken fails the server at once, naming the flag.
TEST(MetricsFaultTest, AMetricsPortInUseFailsAtOnceNamingIt) {
  TempDir tmp;
  Child gen({Bin("netloader-make-checkpoint"), "--output", tmp / "model", "--tensors", "4",
             "--size-mib", "1"},
            tmp / "gen");
  ASSERT_EQ(gen.Wait(60s), 0) << gen.Stderr();
  Child first(
      {Bin("netloader-server"), "--model", tmp / "model", "--metrics-listen", "127.0.0.1:0"},
      tmp / "first");
  const std::string url = MetricsUrl(first);
  ASSERT_FALSE(url.empty()) << first.Stderr();
  const std::string taken = url.substr(7, url.size() - 7 - 8);  // HOST:PORT
  Child second({Bin("netloader-server"), "--model", tmp / "model", "--metrics-listen", taken},
               tmp / "second");
  EXPECT_EQ(second.Wait(60s), 2) << second.Stderr();
  EXPECT_NE(second.Stderr().find("--metrics-listen"), std::string::npos) << second.Stderr();
  EXPECT_NE(second.Stderr().find(taken), std::string::npos) << second.Stderr();
}

}  // namespace
}  // namespace netloader
