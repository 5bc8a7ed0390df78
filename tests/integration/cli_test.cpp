// Real processes, real MPI: netloader-server and netloader-client started as separate programs,
// connected through the private rendezvous the server starts, over loopback.

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "netloader/safetensors.h"
#include "netloader/server.h"
#include "netloader/transport.h"
#include "tests/support/same_checkpoint.h"
#include "tests/support/test_util.h"

namespace netloader {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::ExpectSameCheckpoint;
using testing::TempDir;

std::string Bin(const std::string& name) { return testing::BinDir() + "/" + name; }

void MakeCheckpoint(const std::string& dir, int tensors, int mib, int shards, int seed) {
  Child gen({Bin("netloader-make-checkpoint"), "--output", dir, "--tensors",
             std::to_string(tensors), "--size-mib", std::to_string(mib), "--shards",
             std::to_string(shards), "--seed", std::to_string(seed)},
            dir + "-gen");
  ASSERT_EQ(gen.Wait(60s), 0) << gen.Stderr();
}

// A running netloader-server; stopped with SIGTERM on destruction.
class ServerProcess {
 public:
  ServerProcess(const TempDir& tmp, const std::string& model, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {
        Bin("netloader-server"), "--model",         model,           "--listen",
        "tcp://127.0.0.1:0",     "--endpoint-file", tmp / "endpoint"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    child_ = std::make_unique<Child>(argv, tmp / "server");
    endpoint_ = testing::WaitForLine(tmp / "endpoint", 30s);
  }
  ~ServerProcess() { Stop(); }
  int Stop() {
    child_->Signal(SIGTERM);
    return child_->Wait(20s);
  }
  const std::string& endpoint() const { return endpoint_; }
  Child& child() { return *child_; }

 private:
  std::unique_ptr<Child> child_;
  std::string endpoint_;
};

// The last line of `text` that parses as a JSON object (MPI may print its own lines to stdout).
nlohmann::json LastJsonLine(const std::string& text) {
  std::vector<nlohmann::json> lines = testing::JsonLines(text);
  return lines.empty() ? nlohmann::json(nullptr) : lines.back();
}

struct ClientRun {
  int exit_code;
  nlohmann::json summary;
  std::string stderr_text;
};

ClientRun RunClient(const TempDir& tmp, const std::string& name, std::vector<std::string> args) {
  std::vector<std::string> argv = {Bin("netloader-client"), "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  Child client(argv, tmp / name);
  ClientRun run{client.Wait(120s), nullptr, client.Stderr()};
  run.summary = LastJsonLine(client.Stdout());
  return run;
}

// Waits (up to 30 s) until a netloader-client started with --log-level debug has connected over
// MPI and is receiving: a signal sent then lands in the middle of the stream.
bool WaitUntilStreaming(Child& client) {
  return testing::WaitFor(
      [&] { return client.Stderr().find("over MPI; receiving") != std::string::npos; }, 60s);
}

// A netloader-client that holds its load once a tenth of the model is verified (until a file
// that never appears): data has flowed both ways, so a kill lands mid-stream rather than while
// UCX is still wiring up the connection (docs/failure-and-security.md, "Known gaps").
std::vector<std::string> HeldVictim(const std::string& endpoint, const std::string& model,
                                    const TempDir& tmp) {
  return {Bin("netloader-client"), "--source",   endpoint, "--model",           model,
          "--verify-only",         "--window",   "1",      "--testing-hold-at", "10",
          "--testing-hold-file",   tmp / "never"};
}
bool WaitUntilHeld(Child& client) {
  return testing::WaitFor(
      [&] { return client.Stderr().find("holding the load") != std::string::npos; }, 60s);
}

// Stops a host_loop_server and checks its own loop ticked all through the transfers it served
// (about once per ms, never frozen for long), and that it served `served` clients.
void StopHostAndExpectItKeptTicking(Child& host, int served) {
  host.Signal(SIGTERM);
  ASSERT_EQ(host.Wait(20s), 0) << host.Stderr();
  nlohmann::json loop = nlohmann::json::parse(host.Stdout(), nullptr, false);
  ASSERT_TRUE(loop.is_object()) << host.Stdout();
  EXPECT_EQ(loop["served"], served);
  EXPECT_GE(loop["iterations_during_transfer"].get<int>(), 20) << loop.dump();
  EXPECT_LT(loop["max_gap_ms"].get<double>(), 250.0) << loop.dump();
}

TEST(CliTest, TwoProcessTransferOfMixedCheckpointIsByteIdentical) {
  TempDir tmp;
  // 256 tensors of all 15 dtypes: a zero-byte one, a scalar, an embedding of 6 MiB (> the 4 MiB
  // chunk) and hundreds of small ones that get coalesced.
  MakeCheckpoint(tmp / "model", 256, 48, 1, 11);
  ServerProcess server(tmp, tmp / "model");
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  ClientRun run =
      RunClient(tmp, "client",
                {"--source", server.endpoint(), "--model", tmp / "model", "--output", tmp / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["ok"], true);
  EXPECT_EQ(run.summary["tensors"], 256);
  EXPECT_GT(run.summary["bytes"].get<uint64_t>(), 40u << 20);
  // The transfer's own rate and the run's wall time, apart: each phase within the next.
  const double transfer = run.summary["transfer_seconds"], load = run.summary["load_seconds"],
               wall = run.summary["wall_seconds"];
  EXPECT_GT(run.summary["transfer_gbps"].get<double>(), 0.0);
  EXPECT_NEAR(run.summary["transfer_gbps"].get<double>(),
              run.summary["bytes"].get<double>() / transfer / 1e9, 1e-6);
  EXPECT_GT(transfer, 0.0);
  EXPECT_LE(transfer, load);
  EXPECT_LE(load, wall);
  EXPECT_FALSE(run.summary.contains("gbps")) << "no figure whose span is ambiguous";
  EXPECT_EQ(run.summary["output_verified"], true) << "the written files were read back and checked";
  // Same writer, same metadata: the output file is the input file, byte for byte.
  EXPECT_TRUE(testing::ReadFile(tmp / "model/model.safetensors") ==
              testing::ReadFile(tmp / "out/model.safetensors"));
  ExpectSameCheckpoint(tmp / "model", tmp / "out");
  EXPECT_EQ(server.Stop(), 0) << "SIGTERM stops the server gracefully";
  EXPECT_NE(server.child().Stdout().find("served 1 clients (0 failed"), std::string::npos)
      << server.child().Stdout();
}

// Processes whose command line starts with `name` (MPI tests run one at a time, so none of
// another test's are counted).
int CountProcesses(const std::string& name) {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string cmdline = testing::ReadFile(entry.path().string() + "/cmdline");
    if (cmdline.rfind(name, 0) == 0) ++count;
  }
  return count;
}

TEST(CliTest, StoppedServerLeavesNoRendezvousOrDaemonBehind) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 5, 1, 1, 20);
  const int before = CountProcesses("ompi-server");
  ServerProcess server(tmp, tmp / "model");
  ASSERT_FALSE(server.endpoint().empty());
  EXPECT_EQ(CountProcesses("ompi-server"), before + 1) << "the server started a private one";
  EXPECT_EQ(server.Stop(), 0);
  // The private ompi-server ignores SIGTERM; it must still die with its parent.
  EXPECT_TRUE(testing::WaitFor([&] { return CountProcesses("ompi-server") == before; }, 30s))
      << CountProcesses("ompi-server") << " ompi-server processes, " << before << " before";
}

TEST(CliTest, ShardedCheckpointArrivesWithTheSameShardsAndIndex) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 40, 8, 3, 12);
  ServerProcess server(tmp, tmp / "model");
  ClientRun run = RunClient(tmp, "client",
                            {"--source", server.endpoint(), "--model",
                             tmp / "model/model.safetensors.index.json", "--output", tmp / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  for (int s = 1; s <= 3; ++s) {
    const std::string f = "/model-0000" + std::to_string(s) + "-of-00003.safetensors";
    EXPECT_TRUE(testing::ReadFile(tmp / "model" + f) == testing::ReadFile(tmp / "out" + f)) << f;
  }
  ExpectSameCheckpoint(tmp / "model", tmp / "out");
}

// --output into a folder that already holds other things: another model, a stray file. Only
// what this run writes is written and read back; the rest is left as it was.
TEST(CliTest, OutputIntoAFolderHoldingOtherFilesTouchesAndChecksOnlyItsOwn) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 20, 4, 1, 51);
  MakeCheckpoint(tmp / "out", 12, 2, 3, 52);  // another, sharded model already in the folder
  const std::string stray = std::string(NETLOADER_TEST_DATA) + "/tinygrad-mnist.safetensors";
  std::filesystem::copy_file(stray, tmp / "out/mnist.safetensors");
  const std::string other_index = testing::ReadFile(tmp / "out/model.safetensors.index.json");
  ServerProcess server(tmp, tmp / "model");
  ClientRun run =
      RunClient(tmp, "client",
                {"--source", server.endpoint(), "--model", tmp / "model", "--output", tmp / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["output_verified"], true);
  EXPECT_TRUE(testing::ReadFile(tmp / "model/model.safetensors") ==
              testing::ReadFile(tmp / "out/model.safetensors"));
  EXPECT_TRUE(testing::ReadFile(stray) == testing::ReadFile(tmp / "out/mnist.safetensors"));
  EXPECT_EQ(testing::ReadFile(tmp / "out/model.safetensors.index.json"), other_index);
}

// --output writes each chunk into the output files as it arrives: a model many times larger
// than the staging ring (4 x 1 MiB) arrives byte-identical while the client's peak resident
// memory stays within 64 MiB plus the ring, and no temporary file is left.
TEST(CliTest, OutputStreamsIntoTheFilesWithinBoundedMemory) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 64, 256, 2, 81);
  ServerProcess server(tmp, tmp / "model");
  ClientRun run =
      RunClient(tmp, "client",
                {"--source", server.endpoint(), "--model", tmp / "model", "--output", tmp / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["streamed"], true);
  EXPECT_EQ(run.summary["resumed"], false);
  EXPECT_EQ(run.summary["output_verified"], true);
  EXPECT_LE(run.summary["peak_rss_bytes"].get<uint64_t>(), (64u + 4u) << 20) << run.summary.dump();
  testing::ExpectSameCheckpoint(tmp / "model", tmp / "out");
  for (const auto& entry : std::filesystem::directory_iterator(tmp / "out")) {
    EXPECT_EQ(entry.path().string().find(".partial"), std::string::npos) << entry.path();
  }
}

// A pull killed half way leaves only NAME.partial files (and while it ran, a second pull into
// the same directory was refused); the same command then resumes: it pulls about the half that
// is missing (what the first run verified stays) and ends byte-identical under the final names.
TEST(CliFaultTest, AKilledPullRunAgainPullsOnlyWhatIsMissing) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 40, 96, 2, 83);
  ServerProcess server(tmp, tmp / "model");
  const std::vector<std::string> pull = {"--source", server.endpoint(), "--model",  tmp / "model",
                                         "--output", tmp / "out",       "--window", "2"};
  std::vector<std::string> held = {Bin("netloader-client"), "--testing-hold-at", "50",
                                   "--testing-hold-file", tmp / "never"};
  held.insert(held.end(), pull.begin(), pull.end());
  Child first(held, tmp / "first");
  ASSERT_TRUE(WaitUntilHeld(first)) << first.Stderr();
  // Meanwhile a second pull into the same directory is refused: it would truncate the files.
  ClientRun second = RunClient(tmp, "second", pull);
  EXPECT_EQ(second.exit_code, 7) << second.stderr_text;
  EXPECT_NE(second.stderr_text.find("another process is writing it"), std::string::npos)
      << second.stderr_text;
  first.Signal(SIGKILL);
  ASSERT_EQ(first.Wait(30s), 128 + SIGKILL);
  EXPECT_TRUE(std::filesystem::exists(tmp / "out/model-00001-of-00002.safetensors.partial"));
  EXPECT_FALSE(std::filesystem::exists(tmp / "out/model-00001-of-00002.safetensors"))
      << "nothing appears under its final name before it is complete";

  ClientRun again = RunClient(tmp, "again", pull);
  ASSERT_EQ(again.exit_code, 0) << again.stderr_text;
  EXPECT_EQ(again.summary["resumed"], true) << again.summary.dump();
  const uint64_t bytes = again.summary["bytes"];
  EXPECT_LE(again.summary["bytes_received"].get<uint64_t>(), bytes / 2 + (2u << 20))
      << "half the model and a window, at most: " << again.summary.dump();
  EXPECT_GE(again.summary["bytes_reused"].get<uint64_t>(), bytes / 2 - (2u << 20));
  EXPECT_LE(again.summary["peak_rss_bytes"].get<uint64_t>(), (64u + 4u) << 20)
      << "checking what the partial files hold maps them a chunk at a time";
  testing::ExpectSameCheckpoint(tmp / "model", tmp / "out");
}

// A disk too small for the model: the client fails before pulling anything (the space is
// reserved up front), exit 7, naming the file; nothing appears under a final name.
TEST(CliFaultTest, AFullDiskFailsAtOnceNamingTheFile) {
  TempDir tmp;
  std::filesystem::create_directories(tmp / "small");
  Child mount({"/bin/mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", tmp / "small"},
              tmp / "mount");
  if (mount.Wait(30s) != 0) GTEST_SKIP() << "cannot mount a small tmpfs here: " << mount.Stderr();
  struct Unmount {
    std::string dir;
    ~Unmount() {
      Child umount({"/bin/umount", dir}, dir + "-umount");
      umount.Wait(std::chrono::seconds(30));
    }
  } unmount{tmp / "small"};
  MakeCheckpoint(tmp / "model", 10, 32, 1, 85);
  ServerProcess server(tmp, tmp / "model");
  ClientRun run = RunClient(
      tmp, "client",
      {"--source", server.endpoint(), "--model", tmp / "model", "--output", tmp / "small/out"});
  EXPECT_EQ(run.exit_code, 7) << run.stderr_text;
  EXPECT_NE(run.stderr_text.find(tmp / "small/out/model.safetensors.partial"), std::string::npos)
      << run.stderr_text;
  EXPECT_NE(run.stderr_text.find("No space left"), std::string::npos) << run.stderr_text;
  EXPECT_FALSE(std::filesystem::exists(tmp / "small/out/model.safetensors"));
}

// A file of the name the output would take is never replaced silently: the client refuses
// before loading anything, names it, and leaves it; --overwrite replaces it.
TEST(CliTest, OutputNeverReplacesAnExistingFileUnlessToldTo) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 10, 1, 1, 53);
  std::filesystem::create_directories(tmp / "out");
  testing::WriteFile(tmp / "out/model.safetensors", "the user's own file");
  ServerProcess server(tmp, tmp / "model");
  const std::vector<std::string> load = {"--source",    server.endpoint(), "--model",
                                         tmp / "model", "--output",        tmp / "out"};
  ClientRun refused = RunClient(tmp, "refused", load);
  EXPECT_EQ(refused.exit_code, 7) << refused.stderr_text;
  EXPECT_NE(refused.stderr_text.find(tmp / "out/model.safetensors"), std::string::npos)
      << refused.stderr_text;
  EXPECT_NE(refused.stderr_text.find("--overwrite"), std::string::npos) << refused.stderr_text;
  EXPECT_EQ(testing::ReadFile(tmp / "out/model.safetensors"), "the user's own file");
  std::vector<std::string> overwrite = load;
  overwrite.push_back("--overwrite");
  ClientRun replaced = RunClient(tmp, "replaced", overwrite);
  ASSERT_EQ(replaced.exit_code, 0) << replaced.stderr_text;
  EXPECT_TRUE(testing::ReadFile(tmp / "model/model.safetensors") ==
              testing::ReadFile(tmp / "out/model.safetensors"));
  EXPECT_EQ(server.Stop(), 0);
  EXPECT_NE(server.child().Stdout().find("served 1 clients (0 failed"), std::string::npos)
      << "the refused run never registered: " << server.child().Stdout();
}

// A layout file: the safetensors header alone, as a user ships a model's layout to the machines
// that load it. It gives --model everything it needs.
TEST(CliTest, AHeaderOnlyLayoutFileIsEnoughForModel) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 30, 8, 1, 54);
  const std::string file = testing::ReadFile(tmp / "model/model.safetensors");
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, file.data(), 8);
  std::filesystem::create_directories(tmp / "layout");
  testing::WriteFile(tmp / "layout/model.safetensors", file.substr(0, 8 + header_bytes));
  ServerProcess server(tmp, tmp / "model");
  ClientRun run = RunClient(
      tmp, "client",
      {"--source", server.endpoint(), "--model", tmp / "layout", "--output", tmp / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["tensors"], 30);
  EXPECT_EQ(run.summary["output_verified"], true);
  EXPECT_TRUE(file == testing::ReadFile(tmp / "out/model.safetensors"));
}

TEST(CliTest, FileWrittenByHuggingFaceIsServedAndRewrittenFaithfully) {
  TempDir tmp;
  const std::string model = std::string(NETLOADER_TEST_DATA) + "/small-test.safetensors";
  ServerProcess server(tmp, model);
  ClientRun run = RunClient(
      tmp, "client", {"--source", server.endpoint(), "--model", model, "--output", tmp / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_EQ(run.summary["tensors"], 4);
  ExpectSameCheckpoint(model, tmp / "out/small-test.safetensors");
}

TEST(CliTest, TwoClientsAtOnceFromOneServerBothGetEveryByte) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 64, 64, 1, 13);
  ServerProcess server(tmp, tmp / "model");
  std::vector<std::string> common = {"--source", server.endpoint(), "--model", tmp / "model"};
  std::vector<std::string> a1 = {Bin("netloader-client"), "--json", "--output", tmp / "out1"};
  std::vector<std::string> a2 = {Bin("netloader-client"), "--json", "--output", tmp / "out2"};
  a1.insert(a1.end(), common.begin(), common.end());
  a2.insert(a2.end(), common.begin(), common.end());
  Child c1(a1, tmp / "c1");
  Child c2(a2, tmp / "c2");
  EXPECT_EQ(c1.Wait(120s), 0) << c1.Stderr();
  EXPECT_EQ(c2.Wait(120s), 0) << c2.Stderr();
  const std::string original = testing::ReadFile(tmp / "model/model.safetensors");
  EXPECT_TRUE(original == testing::ReadFile(tmp / "out1/model.safetensors"));
  EXPECT_TRUE(original == testing::ReadFile(tmp / "out2/model.safetensors"));
  EXPECT_EQ(server.Stop(), 0);
  EXPECT_NE(server.child().Stdout().find("served 2 clients (0 failed"), std::string::npos)
      << server.child().Stdout() << server.child().Stderr();
}

TEST(CliTest, ClientForAModelTheServerDoesNotHoldIsRefusedNamingTheDigest) {
  TempDir tmp;
  MakeCheckpoint(tmp / "served", 10, 1, 1, 14);
  MakeCheckpoint(tmp / "wanted", 12, 1, 1, 14);
  ServerProcess server(tmp, tmp / "served");
  const auto start = std::chrono::steady_clock::now();
  ClientRun run = RunClient(tmp, "client",
                            {"--source", server.endpoint(), "--model", tmp / "wanted",
                             "--verify-only", "--register-timeout", "120"});
  EXPECT_EQ(run.exit_code, 4) << run.stderr_text;
  EXPECT_EQ(run.summary["ok"], false);
  EXPECT_EQ(run.summary["error"], "FingerprintMismatch");
  const std::string message = run.summary["message"];
  EXPECT_NE(message.find("table_digest"), std::string::npos) << message;
  EXPECT_NE(message.find("the source has 10 tensors, this side 12"), std::string::npos) << message;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s) << "a refusal is immediate";
}

TEST(CliTest, PartitionMismatchIsRefusedNamingTheField) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 10, 1, 1, 15);
  ServerProcess server(tmp, tmp / "model", {"--tp-size", "2", "--tp-rank", "1"});
  ClientRun run = RunClient(
      tmp, "client",
      {"--source", server.endpoint(), "--model", tmp / "model", "--verify-only", "--tp-size", "2"});
  EXPECT_EQ(run.exit_code, 4) << run.stderr_text;
  EXPECT_NE(
      run.summary["message"].get<std::string>().find("partition.tp_rank: server='1' client='0'"),
      std::string::npos)
      << run.summary.dump();
}

// Nothing listens on the port: the refused connection is known at once, not at the register
// deadline, and the next source is tried.
TEST(CliFaultTest, ASourceThatRefusesTheConnectionFailsAtOnceAndTheNextOneServes) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 5, 1, 1, 16);
  ServerProcess server(tmp, tmp / "model");
  const auto start = std::chrono::steady_clock::now();
  ClientRun run =
      RunClient(tmp, "client",
                {"--source", "tcp://127.0.0.1:9", "--source", server.endpoint(), "--model",
                 tmp / "model", "--verify-only", "--register-timeout", "120"});
  EXPECT_EQ(run.exit_code, 0) << run.stderr_text;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s) << "far from the 120 s deadline";
  ASSERT_EQ(run.summary["attempts"].size(), 2u) << run.summary.dump();
  EXPECT_NE(run.summary["attempts"][0]["status"].get<std::string>().find(
                "Unavailable: cannot connect to tcp://127.0.0.1:9: the connection was refused"),
            std::string::npos)
      << run.summary.dump();
  EXPECT_EQ(run.summary["source"], server.endpoint());
}

// A port that accepts TCP connections but never speaks ZeroMQ: only the deadline tells.
TEST(CliFaultTest, ASourceThatAcceptsButNeverAnswersFailsAtTheRegisterDeadline) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 5, 1, 1, 16);
  testing::MuteListener mute;
  ClientRun run = RunClient(tmp, "client",
                            {"--source", mute.endpoint(), "--model", tmp / "model", "--verify-only",
                             "--register-timeout", "0.5"});
  EXPECT_EQ(run.exit_code, 5) << run.stderr_text;
  EXPECT_EQ(run.summary["error"], "Timeout");
  EXPECT_NE(run.summary["message"].get<std::string>().find("no answer within 500 ms"),
            std::string::npos)
      << run.summary.dump();
}

TEST(CliTest, BadModelPathGivesExitCode3AndNamesThePath) {
  TempDir tmp;
  Child server({Bin("netloader-server"), "--model", tmp / "missing"}, tmp / "server");
  EXPECT_EQ(server.Wait(30s), 3);
  EXPECT_NE(server.Stderr().find(tmp / "missing"), std::string::npos) << server.Stderr();
}

TEST(CliFaultTest, ServerOnAPortInUseOrWithAMissingRendezvousFailsAtOnceNamingIt) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 8, 1, 1, 24);
  ServerProcess first(tmp, tmp / "model");
  ASSERT_FALSE(first.endpoint().empty());
  const auto start = std::chrono::steady_clock::now();
  Child taken({Bin("netloader-server"), "--model", tmp / "model", "--listen", first.endpoint()},
              tmp / "taken");
  EXPECT_EQ(taken.Wait(30s), 5);
  EXPECT_NE(taken.Stderr().find("cannot bind '" + first.endpoint() + "': Address already in use"),
            std::string::npos)
      << taken.Stderr();
  Child missing({Bin("netloader-server"), "--model", tmp / "model", "--rendezvous",
                 "file:" + (tmp / "no-such-uri")},
                tmp / "missing");
  EXPECT_EQ(missing.Wait(30s), 2);
  EXPECT_NE(
      missing.Stderr().find("rendezvous file '" + (tmp / "no-such-uri") + "' is missing or empty"),
      std::string::npos)
      << missing.Stderr();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s) << "no waiting on a deadline";
}

TEST(CliTest, HelpExplainsEveryFlagAndTheExitCodes) {
  TempDir tmp;
  Child client({Bin("netloader-client"), "--help"}, tmp / "client");
  ASSERT_EQ(client.Wait(10s), 0);
  for (const char* flag : {"--source",      "--model",      "--output",
                           "--overwrite",   "layout file",  "--verify-only",
                           "transfer_gbps", "wall_seconds", "--tp-size",
                           "--tp-rank",     "--pp-size",    "--pp-rank",
                           "--model-id",    "--json",       "--rendezvous",
                           "--secret-file", "--no-auth",    "--heartbeat-timeout",
                           "--delta-from",  "bytes_reused", "bytes_received",
                           "--tensors",     "attempts",     "Exit codes",
                           "--registry",    "--topology",   "--metrics-listen",
                           "--mpi-helpers", "resumes",      "peak_rss_bytes"}) {
    EXPECT_NE(client.Stdout().find(flag), std::string::npos) << flag;
  }
  Child server({Bin("netloader-server"), "--help"}, tmp / "server");
  ASSERT_EQ(server.Wait(10s), 0);
  for (const char* flag :
       {"--model", "--listen", "--max-clients", "--chunk-mib", "--tp-size", "--model-id", "--json",
        "--secret-file", "--no-auth", "--heartbeat-timeout", "Exit codes", "--registry",
        "--registry-ttl", "--topology", "--metrics-listen", "--mpi-helpers"}) {
    EXPECT_NE(server.Stdout().find(flag), std::string::npos) << flag;
  }
}

// A child of process `pid` whose command is `comm`; -1 when it has none.
pid_t ChildPid(pid_t pid, const std::string& comm) {
  const std::vector<pid_t> children = testing::ChildrenNamed(pid, comm);
  return children.empty() ? -1 : children.front();
}

// The environment a child of process `pid` whose command is `comm` was started with, each entry
// between two '\n'; empty when `pid` has no such child.
std::string ChildEnvironment(pid_t pid, const std::string& comm) {
  const pid_t child = ChildPid(pid, comm);
  if (child < 0) return "";
  std::string env = testing::ReadFile("/proc/" + std::to_string(child) + "/environ");
  std::replace(env.begin(), env.end(), '\0', '\n');
  return "\n" + env;
}

// MPI start-up leaves out hwloc's PCI and I/O discovery, which on a VM costs ~25 ms in MPI_Init
// and again in the orted daemon it forks (DESIGN.md), and leaves this process's environment as
// it found it for the host's own uses of hwloc.
TEST(MpiStartupTest, SkipsHwlocIoDiscoveryInItsDaemonAndLeavesTheEnvironmentAsItWas) {
  TempDir tmp;
  testing::Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  unsetenv("HWLOC_COMPONENTS");
  TransportOptions options;
  options.rendezvous_uri = rendezvous.spec();
  const Status started = InitializeTransport(options);
  ASSERT_TRUE(started.ok()) << started.ToString();
  EXPECT_EQ(std::getenv("HWLOC_COMPONENTS"), nullptr);
  const std::string orted = ChildEnvironment(getpid(), "orted");
  ASSERT_FALSE(orted.empty()) << "MPI_Init forks an orted daemon";
  EXPECT_NE(orted.find("\nHWLOC_COMPONENTS=-pci,-linuxio\n"), std::string::npos) << orted;
}

// A user's own HWLOC_COMPONENTS wins, as every other setting of the MPI recipe does.
TEST(MpiStartupTest, AUsersHwlocSettingIsKept) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 4, 1, 1, 3);
  testing::Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  setenv("HWLOC_COMPONENTS", "-gl", 1);  // inherited by the server
  ServerProcess server(tmp, tmp / "model", {"--rendezvous", rendezvous.spec()});
  unsetenv("HWLOC_COMPONENTS");
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  std::string orted;
  ASSERT_TRUE(testing::WaitFor(
      [&] { return !(orted = ChildEnvironment(server.child().pid(), "orted")).empty(); }, 30s));
  EXPECT_NE(orted.find("\nHWLOC_COMPONENTS=-gl\n"), std::string::npos) << orted;
}

TEST(CliTest, SharedRendezvousStartedSeparatelyServesAsTheMpiMeetingPoint) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 20, 4, 1, 18);
  // One rendezvous for every instance, as a deployment runs it (docs/usage.md, "How the MPI
  // connection is made").
  testing::Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  const std::string spec = rendezvous.spec();
  ServerProcess server(tmp, tmp / "model", {"--rendezvous", spec, "--mpi-helpers"});
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  EXPECT_NE(server.child().Stderr().find(testing::ReadFile(tmp / "rendezvous.uri").substr(0, 10)),
            std::string::npos)
      << "the server uses the shared rendezvous, not a private one: " << server.child().Stderr();
  ClientRun run = RunClient(tmp, "client",
                            {"--source", server.endpoint(), "--model", tmp / "model",
                             "--verify-only", "--rendezvous", spec});
  EXPECT_EQ(run.exit_code, 0) << run.stderr_text;
}

TEST(CliFaultTest, ClientKilledMidTransferIsLoggedAndTheNextClientIsServed) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 50, 512, 1, 19);
  ServerProcess server(tmp, tmp / "model",
                       {"--connect-timeout", "5", "--stall-timeout", "5", "--max-clients", "1"});
  ASSERT_FALSE(server.endpoint().empty());
  {
    Child victim(HeldVictim(server.endpoint(), tmp / "model", tmp), tmp / "victim");
    // Kill it in the middle of the stream.
    ASSERT_TRUE(WaitUntilHeld(victim)) << victim.Stderr();
    victim.Signal(SIGKILL);
    EXPECT_EQ(victim.Wait(10s), 128 + SIGKILL);
  }
  const auto start = std::chrono::steady_clock::now();
  ClientRun next = RunClient(tmp, "next",
                             {"--source", server.endpoint(), "--model", tmp / "model",
                              "--verify-only", "--busy-timeout", "30"});
  EXPECT_EQ(next.exit_code, 0) << next.stderr_text;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
  EXPECT_EQ(server.Stop(), 0);
  EXPECT_NE(server.child().Stdout().find("served 1 clients (1 failed"), std::string::npos)
      << server.child().Stdout() << server.child().Stderr();
}

TEST(CliFaultTest, ServerKilledMidTransferFailsTheClientWithinItsDeadlineAndNothingIsLoaded) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 50, 512, 1, 23);
  ServerProcess server(tmp, tmp / "model");
  ASSERT_FALSE(server.endpoint().empty());
  Child client(
      {Bin("netloader-client"), "--source", server.endpoint(), "--model", tmp / "model", "--output",
       tmp / "out", "--window", "1", "--stall-timeout", "5", "--json", "--log-level", "debug"},
      tmp / "client");
  ASSERT_TRUE(WaitUntilStreaming(client)) << client.Stderr();
  const auto killed = std::chrono::steady_clock::now();
  server.child().Signal(SIGKILL);
  const int code = client.Wait(60s);
  EXPECT_LT(std::chrono::steady_clock::now() - killed, 20s) << "stall timeout 5 s, plus slack";
  EXPECT_TRUE(code == 5 || code == 6) << "exit " << code << ": " << client.Stderr();
  nlohmann::json summary = LastJsonLine(client.Stdout());
  ASSERT_TRUE(summary.is_object()) << "stdout: " << client.Stdout();
  EXPECT_EQ(summary["ok"], false) << client.Stdout();
  EXPECT_FALSE(std::filesystem::exists(tmp / "out/model.safetensors")) << "nothing written";
}

// Two netloader-server processes holding one checkpoint, each with a private rendezvous of its
// own (--mpi-helpers): a client reaches each through an MPI helper bound to that source's.
struct TwoSources {
  explicit TwoSources(const std::string& model) {
    a = std::make_unique<ServerProcess>(tmp_a, model, std::vector<std::string>{"--mpi-helpers"});
    b = std::make_unique<ServerProcess>(tmp_b, model, std::vector<std::string>{"--mpi-helpers"});
  }
  bool ready() const { return a && b && !a->endpoint().empty() && !b->endpoint().empty(); }
  // Once `client` holds its load (--testing-hold-at ... --testing-hold-file go), SIGKILLs source
  // a and releases the client; its summary once it exited 0, else null (the test then fails).
  nlohmann::json KillAAtTheHold(Child& client, const std::string& go) {
    if (!WaitUntilHeld(client)) {
      ADD_FAILURE() << "the client never held its load: " << client.Stderr();
      return nullptr;
    }
    a->child().Signal(SIGKILL);
    EXPECT_EQ(a->child().Wait(20s), 128 + SIGKILL);
    testing::WriteFile(go, "");
    const int code = client.Wait(120s);
    EXPECT_EQ(code, 0) << client.Stderr();
    const nlohmann::json summary = LastJsonLine(client.Stdout());
    EXPECT_TRUE(summary.is_object()) << client.Stdout();
    return code == 0 && summary.is_object() ? summary : nlohmann::json(nullptr);
  }
  // netloader-client loading `model` into `out` from a, then b, printing its JSON summary; then
  // `extra`.
  std::vector<std::string> Client(const std::string& model, const std::string& out,
                                  const std::vector<std::string>& extra) const {
    std::vector<std::string> argv = {Bin("netloader-client"),
                                     "--source",
                                     a->endpoint(),
                                     "--source",
                                     b->endpoint(),
                                     "--model",
                                     model,
                                     "--output",
                                     out,
                                     "--mpi-helpers",
                                     "--json"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  TempDir tmp_a, tmp_b;
  std::unique_ptr<ServerProcess> a, b;
};

// Resume: a source killed at half a load costs only the chunks it had in flight. The client
// holds the load once half is verified, the test kills the first source, and the client then
// asks the second one only for the chunks it does not hold. The two sources share no
// rendezvous.
TEST(CliFaultTest, ASourceKilledAtHalfCostsOnlyTheChunksInFlightTheNextOneSendsTheRest) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 40, 64, 1, 37);
  TwoSources sources(tmp / "model");
  ASSERT_TRUE(sources.ready());
  ServerProcess& a = *sources.a;
  ServerProcess& b = *sources.b;
  const int window = 2;
  Child client(sources.Client(tmp / "model", tmp / "out",
                              {"--window", std::to_string(window), "--stall-timeout", "5",
                               "--heartbeat-timeout", "2", "--log-level", "debug",
                               "--testing-hold-at", "50", "--testing-hold-file", tmp / "go"}),
               tmp / "client");
  const nlohmann::json summary = sources.KillAAtTheHold(client, tmp / "go");
  ASSERT_TRUE(summary.is_object());
  const uint64_t bytes = summary["bytes"];
  const uint64_t chunk_bytes = ServerOptions{}.chunk_bytes;  // the server's default
  EXPECT_GE(summary["bytes_received"].get<uint64_t>(), bytes);
  EXPECT_LE(summary["bytes_received"].get<uint64_t>(), bytes + window * chunk_bytes)
      << summary.dump();
  ASSERT_EQ(summary["attempts"].size(), 2u) << summary.dump();
  const nlohmann::json& first = summary["attempts"][0];
  const nlohmann::json& second = summary["attempts"][1];
  EXPECT_EQ(first["source"], a.endpoint());
  EXPECT_NE(first["status"], "OK");
  EXPECT_GE(first["bytes"].get<uint64_t>(), bytes / 2) << "held at half";
  EXPECT_EQ(second["source"], b.endpoint());
  EXPECT_EQ(second["status"], "OK");
  EXPECT_EQ(first["bytes"].get<uint64_t>() + second["bytes"].get<uint64_t>(), bytes)
      << "the second source sent only what the first had not delivered";
  EXPECT_EQ(summary["source"], b.endpoint());
  ExpectSameCheckpoint(tmp / "model", tmp / "out");
}

// Striping: two sources at once, disjoint chunks from each. The load is held at its first
// verified chunk until both sources have connected (so each holds a batch), then released.
TEST(CliTest, AStripedLoadTakesDisjointChunksFromTwoSourcesAndIsByteIdentical) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 80, 128, 1, 43);
  TwoSources sources(tmp / "model");
  ASSERT_TRUE(sources.ready());
  Child client(sources.Client(tmp / "model", tmp / "out",
                              {"--stripe", "2", "--log-level", "debug", "--testing-hold-at", "0",
                               "--testing-hold-file", tmp / "go"}),
               tmp / "client");
  auto connected = [&](const std::string& source) {
    return client.Stderr().find("connected to " + source + " over MPI") != std::string::npos;
  };
  ASSERT_TRUE(testing::WaitFor(
      [&] { return connected(sources.a->endpoint()) && connected(sources.b->endpoint()); }, 60s))
      << client.Stderr();
  testing::WriteFile(tmp / "go", "");
  ASSERT_EQ(client.Wait(120s), 0) << client.Stderr();
  const nlohmann::json summary = LastJsonLine(client.Stdout());
  ASSERT_TRUE(summary.is_object()) << client.Stdout();
  const uint64_t bytes = summary["bytes"];
  ASSERT_EQ(summary["attempts"].size(), 2u) << summary.dump();
  uint64_t delivered = 0;
  for (const nlohmann::json& attempt : summary["attempts"]) {
    EXPECT_EQ(attempt["status"], "OK") << summary.dump();
    EXPECT_GT(attempt["bytes"].get<uint64_t>(), 0u) << "both sources sent: " << summary.dump();
    delivered += attempt["bytes"].get<uint64_t>();
  }
  EXPECT_EQ(delivered, bytes) << "disjoint chunks: nothing sent twice";
  EXPECT_EQ(summary["bytes_received"].get<uint64_t>(), bytes);
  ExpectSameCheckpoint(tmp / "model", tmp / "out");
}

TEST(CliFaultTest, AStripedSourceKilledMidLoadHandsItsChunksToTheOther) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 80, 128, 1, 47);
  TwoSources sources(tmp / "model");
  ASSERT_TRUE(sources.ready());
  const int window = 2;
  Child client(sources.Client(tmp / "model", tmp / "out",
                              {"--stripe", "2", "--window", std::to_string(window),
                               "--stall-timeout", "5", "--heartbeat-timeout", "2",
                               "--testing-hold-at", "50", "--testing-hold-file", tmp / "go"}),
               tmp / "client");
  const nlohmann::json summary = sources.KillAAtTheHold(client, tmp / "go");
  ASSERT_TRUE(summary.is_object());
  const uint64_t bytes = summary["bytes"];
  ASSERT_EQ(summary["attempts"].size(), 2u) << summary.dump();
  EXPECT_NE(summary["attempts"][0]["status"], "OK");
  EXPECT_EQ(summary["attempts"][1]["status"], "OK");
  EXPECT_EQ(summary["attempts"][0]["bytes"].get<uint64_t>() +
                summary["attempts"][1]["bytes"].get<uint64_t>(),
            bytes);
  EXPECT_LE(summary["bytes_received"].get<uint64_t>(), bytes + window * ServerOptions{}.chunk_bytes)
      << summary.dump();
  ExpectSameCheckpoint(tmp / "model", tmp / "out");
}

// Flips one byte in the middle of tensor `index` of shard `shard` of a checkpoint, in place.
void FlipAByteOf(const std::string& dir, size_t index, size_t shard = 0) {
  Result<CheckpointLayout> layout = ReadCheckpointLayout(dir);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  const TensorSpec& t = layout->shards.at(shard).tensors.at(index);
  ASSERT_GT(t.size_bytes, 0u);
  std::fstream file(layout->shards[shard].path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(static_cast<std::streamoff>(t.file_offset + t.size_bytes / 2));
  const char byte = static_cast<char>(file.get() ^ 0x5a);
  file.seekp(static_cast<std::streamoff>(t.file_offset + t.size_bytes / 2));
  file.put(byte);
  ASSERT_TRUE(file.good());
}

// A delta load: the client holds last step's weights on disk and pulls only the chunks that
// changed. Two bytes changed at the source touch two 1 MiB chunks of a 128 MiB model.
TEST(CliTest, ADeltaLoadPullsOnlyTheChunksThatChangedAndTheResultIsTheSourcesBytes) {
  TempDir tmp;
  MakeCheckpoint(tmp / "old", 60, 128, 1, 41);
  std::filesystem::copy(tmp / "old", tmp / "new");
  FlipAByteOf(tmp / "new", 10);
  FlipAByteOf(tmp / "new", 45);
  ServerProcess server(tmp, tmp / "new", {"--chunk-mib", "1"});
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  ClientRun run = RunClient(tmp, "client",
                            {"--source", server.endpoint(), "--model", tmp / "new", "--delta-from",
                             tmp / "old", "--output", tmp / "out"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  const uint64_t bytes = run.summary["bytes"];
  const uint64_t pulled = run.summary["attempts"][0]["bytes"];
  EXPECT_GT(pulled, 0u);
  EXPECT_LE(pulled, 2u << 20) << "two chunks of 1 MiB at most";
  EXPECT_LE(run.summary["bytes_received"].get<uint64_t>(), bytes * 3 / 100) << run.summary.dump();
  EXPECT_EQ(run.summary["bytes_reused"].get<uint64_t>() + pulled, bytes) << run.summary.dump();
  ExpectSameCheckpoint(tmp / "new", tmp / "out");

  // An older copy of another layout is refused before anything is loaded, naming the tensor.
  MakeCheckpoint(tmp / "other", 59, 128, 1, 41);
  ClientRun refused = RunClient(tmp, "refused",
                                {"--source", server.endpoint(), "--model", tmp / "new",
                                 "--delta-from", tmp / "other", "--verify-only"});
  EXPECT_EQ(refused.exit_code, 3) << refused.stderr_text;
  EXPECT_NE(refused.stderr_text.find("has another layout than --model: tensor"), std::string::npos)
      << refused.stderr_text;
}

// A partial load takes only the tensors named, from a source holding the whole model under
// another pipeline split, and writes only those; its output then serves a partial load of a
// subset of them: a source whose overall layout is a stage of the model.
TEST(CliTest, APartialLoadTakesOnlyTheNamedTensorsFromAnySourceHoldingThem) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 45, 32, 2, 43);
  ServerProcess server(tmp, tmp / "model", {"--chunk-mib", "1"});
  const std::vector<std::string> patterns = {"model.layers.1.*", "model.layers.3.mlp.*"};
  ClientRun run = RunClient(
      tmp, "client",
      {"--source", server.endpoint(), "--model", tmp / "model", "--tensors", patterns[0],
       "--tensors", patterns[1], "--pp-size", "2", "--pp-rank", "1", "--output", tmp / "stage"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  ExpectSameCheckpoint(tmp / "model", tmp / "stage", patterns);
  Result<CheckpointLayout> selected =
      SelectFromLayout(*ReadCheckpointLayout(tmp / "model"), patterns);
  ASSERT_TRUE(selected.ok());
  EXPECT_EQ(run.summary["tensors"], selected->tensor_count());
  EXPECT_EQ(run.summary["bytes"], selected->total_bytes());
  EXPECT_EQ(run.summary["bytes_received"], selected->total_bytes()) << "nothing else was sent";
  EXPECT_TRUE(run.summary["output_verified"].get<bool>());

  // With --delta-from: an older copy in which one byte of a selected tensor differs refreshes
  // only that tensor's chunk of the selection.
  std::filesystem::copy(tmp / "model", tmp / "older");
  {
    Result<CheckpointLayout> older = ReadCheckpointLayout(tmp / "older");
    ASSERT_TRUE(older.ok());
    size_t shard = 0, changed = 0;
    while (older->shards.at(shard).tensors.at(changed).name.rfind("model.layers.1.", 0) != 0) {
      if (++changed == older->shards[shard].tensors.size()) ++shard, changed = 0;
    }
    FlipAByteOf(tmp / "older", changed, shard);
  }
  ClientRun delta = RunClient(
      tmp, "delta",
      {"--source", server.endpoint(), "--model", tmp / "model", "--tensors", patterns[0],
       "--tensors", patterns[1], "--delta-from", tmp / "older", "--output", tmp / "refreshed"});
  ASSERT_EQ(delta.exit_code, 0) << delta.stderr_text;
  ExpectSameCheckpoint(tmp / "model", tmp / "refreshed", patterns);
  const uint64_t pulled = delta.summary["attempts"][0]["bytes"];
  EXPECT_GT(pulled, 0u);
  EXPECT_LE(pulled, 1u << 20) << "one 1 MiB chunk";
  EXPECT_EQ(delta.summary["bytes_reused"].get<uint64_t>() + pulled, selected->total_bytes());

  TempDir stage_tmp;  // its own endpoint file
  ServerProcess stage(stage_tmp, tmp / "stage", {"--pp-size", "2", "--pp-rank", "1"});
  ClientRun subset = RunClient(tmp, "subset",
                               {"--source", stage.endpoint(), "--model", tmp / "model", "--tensors",
                                patterns[1], "--output", tmp / "mlp"});
  ASSERT_EQ(subset.exit_code, 0) << subset.stderr_text;
  ExpectSameCheckpoint(tmp / "model", tmp / "mlp", {patterns[1]});

  // Tensors the stage does not hold: refused by name, and the client says which.
  ClientRun lacking = RunClient(tmp, "lacking",
                                {"--source", stage.endpoint(), "--model", tmp / "model",
                                 "--tensors", "model.layers.2.*", "--verify-only"});
  EXPECT_EQ(lacking.exit_code, 4) << lacking.stderr_text;
  EXPECT_NE(lacking.stderr_text.find("the source has no 'model.layers.2."), std::string::npos)
      << lacking.stderr_text;
  // A pattern that matches nothing in --model is a usage error, before any source is asked.
  ClientRun typo = RunClient(tmp, "typo",
                             {"--source", stage.endpoint(), "--model", tmp / "model", "--tensors",
                              "model.layer.1.*", "--verify-only"});
  EXPECT_EQ(typo.exit_code, 2) << typo.stderr_text;
  EXPECT_NE(typo.stderr_text.find("'model.layer.1.*' matches none of the 45 tensors"),
            std::string::npos)
      << typo.stderr_text;
}

// Frozen, not dead: the kernel keeps its TCP connections open, so only the missing heartbeats
// give it away. The server frees the slot well before its 60 s stall deadline.
TEST(CliFaultTest, ClientFrozenMidTransferLosesItsSlotAtTheHeartbeatDeadline) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 100, 256, 1, 29);  // 256 MiB: the stream lasts long enough
  ServerProcess server(tmp, tmp / "model",
                       {"--stall-timeout", "60", "--heartbeat-timeout", "2", "--max-clients", "1"});
  ASSERT_FALSE(server.endpoint().empty());
  Child frozen({Bin("netloader-client"), "--source", server.endpoint(), "--model", tmp / "model",
                "--verify-only", "--window", "1", "--log-level", "debug"},
               tmp / "frozen");
  ASSERT_TRUE(WaitUntilStreaming(frozen)) << frozen.Stderr();
  frozen.Signal(SIGSTOP);
  const auto stopped = std::chrono::steady_clock::now();
  ClientRun next = RunClient(tmp, "next",
                             {"--source", server.endpoint(), "--model", tmp / "model",
                              "--verify-only", "--busy-timeout", "50"});
  EXPECT_EQ(next.exit_code, 0) << next.stderr_text;
  EXPECT_LT(std::chrono::steady_clock::now() - stopped, 20s) << "heartbeat deadline 2 s";
  frozen.Signal(SIGKILL);
  EXPECT_EQ(server.Stop(), 0);
  EXPECT_NE(server.child().Stderr().find("no heartbeat from the client"), std::string::npos)
      << server.child().Stderr();
  EXPECT_NE(server.child().Stdout().find("served 1 clients (1 failed"), std::string::npos)
      << server.child().Stdout();
}

TEST(CliFaultTest, ServerFrozenMidTransferFailsTheClientAtTheHeartbeatDeadline) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 100, 256, 1, 31);
  ServerProcess server(tmp, tmp / "model");
  ASSERT_FALSE(server.endpoint().empty());
  Child client({Bin("netloader-client"), "--source", server.endpoint(), "--model", tmp / "model",
                "--output", tmp / "out", "--window", "1", "--stall-timeout", "60",
                "--heartbeat-timeout", "2", "--json", "--log-level", "debug"},
               tmp / "client");
  ASSERT_TRUE(WaitUntilStreaming(client)) << client.Stderr();
  server.child().Signal(SIGSTOP);
  const auto stopped = std::chrono::steady_clock::now();
  const int code = client.Wait(60s);
  EXPECT_LT(std::chrono::steady_clock::now() - stopped, 15s) << "heartbeat deadline 2 s";
  server.child().Signal(SIGKILL);
  EXPECT_EQ(code, 5) << client.Stderr();
  EXPECT_NE(client.Stderr().find("answered no heartbeat"), std::string::npos) << client.Stderr();
  nlohmann::json summary = LastJsonLine(client.Stdout());
  ASSERT_TRUE(summary.is_object()) << "stdout: " << client.Stdout();
  EXPECT_EQ(summary["ok"], false);
  EXPECT_FALSE(std::filesystem::exists(tmp / "out/model.safetensors")) << "nothing written";
}

// The shared secret as the CLIs use it: the default file, created on first use, copied to a
// client; anything else is refused at once, before the server reveals a byte.
TEST(CliFaultTest, OnlyAClientWithTheServersSecretIsServed) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 20, 64, 1, 37);
  ServerProcess server(tmp, tmp / "model", {"--secret-file", tmp / "keys/server"});
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  const std::vector<std::string> load = {"--source", server.endpoint(), "--model", tmp / "model",
                                         "--verify-only"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), load.begin(), load.end());
    return extra;
  };
  const auto start = std::chrono::steady_clock::now();
  ClientRun stranger = RunClient(
      tmp, "stranger", with({"--secret-file", tmp / "keys/other", "--register-timeout", "120"}));
  EXPECT_EQ(stranger.exit_code, 4) << stranger.stderr_text;
  EXPECT_NE(stranger.stderr_text.find("PermissionDenied"), std::string::npos)
      << stranger.stderr_text;
  ClientRun anonymous =
      RunClient(tmp, "anonymous", with({"--no-auth", "--register-timeout", "120"}));
  EXPECT_EQ(anonymous.exit_code, 4) << anonymous.stderr_text;
  EXPECT_NE(anonymous.stderr_text.find("this side runs without one (--no-auth)"), std::string::npos)
      << anonymous.stderr_text;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s) << "refusals come at once";

  // A secret others may read is refused before anything is sent.
  std::filesystem::copy_file(tmp / "keys/server", tmp / "keys/leaky");
  std::filesystem::permissions(tmp / "keys/leaky", std::filesystem::perms::others_read,
                               std::filesystem::perm_options::add);
  ClientRun leaky = RunClient(tmp, "leaky", with({"--secret-file", tmp / "keys/leaky"}));
  EXPECT_EQ(leaky.exit_code, 2) << leaky.stderr_text;
  EXPECT_NE(leaky.stderr_text.find("chmod 600"), std::string::npos) << leaky.stderr_text;

  std::filesystem::copy_file(tmp / "keys/server", tmp / "keys/copy");  // copy keeps mode 0600
  ClientRun friendly = RunClient(tmp, "friend", with({"--secret-file", tmp / "keys/copy"}));
  EXPECT_EQ(friendly.exit_code, 0) << friendly.stderr_text;
  EXPECT_EQ(server.Stop(), 0);
  EXPECT_NE(server.child().Stdout().find("served 1 clients (0 failed, 0 refused"),
            std::string::npos)
      << server.child().Stdout();
  EXPECT_EQ(server.child().Stdout().find(", 0 failed authentication"), std::string::npos)
      << "the two strangers were counted: " << server.child().Stdout();
}

// A stopped shared rendezvous would leave every MPI connect waiting until its deadline; the server
// notices and refuses new clients with the reason instead, and keeps running.
TEST(CliFaultTest, ADeadRendezvousMakesTheServerRefuseNewClientsNamingIt) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 20, 4, 1, 41);
  testing::Rendezvous rendezvous(tmp);
  ASSERT_TRUE(rendezvous.ready()) << rendezvous.child().Stderr();
  ServerProcess server(tmp, tmp / "model", {"--rendezvous", rendezvous.spec()});
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  const std::vector<std::string> load = {"--source",    server.endpoint(), "--model",
                                         tmp / "model", "--verify-only",   "--connect-timeout",
                                         "120"};
  ClientRun before = RunClient(tmp, "before", load);
  ASSERT_EQ(before.exit_code, 0) << before.stderr_text;

  // Once it has exited (its port closed), the very next client is refused: the server probes
  // the rendezvous before every admission.
  rendezvous.child().Signal(SIGKILL);
  ASSERT_EQ(rendezvous.child().Wait(30s), 128 + SIGKILL);
  const auto start = std::chrono::steady_clock::now();
  ClientRun after = RunClient(tmp, "after", load);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s) << "not the 120 s connect deadline";
  EXPECT_EQ(after.exit_code, 5) << after.stderr_text;
  EXPECT_NE(after.stderr_text.find("rendezvous"), std::string::npos) << after.stderr_text;
  EXPECT_NE(after.stderr_text.find("does not answer"), std::string::npos) << after.stderr_text;
  // Its status says so, rather than "serving".
  ClientRun status = RunClient(tmp, "status", {"--status", server.endpoint()});
  ASSERT_EQ(status.exit_code, 0) << status.stderr_text;
  EXPECT_EQ(status.summary["state"], "unavailable") << status.summary.dump();
  EXPECT_NE(status.summary["failure"].get<std::string>().find("rendezvous"), std::string::npos)
      << status.summary.dump();
  EXPECT_EQ(status.summary["bytes_held"], status.summary["bytes_total"]);
  EXPECT_EQ(server.Stop(), 0) << "the server itself is unharmed";
  EXPECT_NE(server.child().Stdout().find("served 1 clients (0 failed, 1 refused"),
            std::string::npos)
      << server.child().Stdout();
}

// Runs netloader-client loads from `endpoint` until one verifies or `within` passes: a holder
// whose MPI helper died refuses (Unavailable) until its new helper is up. The time it took, or
// nullopt.
std::optional<std::chrono::milliseconds> ServedAgainWithin(const TempDir& tmp,
                                                           const std::string& endpoint,
                                                           const std::string& model,
                                                           std::chrono::seconds within) {
  const auto start = std::chrono::steady_clock::now();
  for (int attempt = 0; attempt < 100 && std::chrono::steady_clock::now() - start < within;
       ++attempt) {
    ClientRun run = RunClient(tmp, "again-" + std::to_string(attempt),
                              {"--source", endpoint, "--model", model, "--verify-only"});
    if (run.exit_code == 0) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - start);
    }
    std::this_thread::sleep_for(200ms);  // between attempts only; nothing waits on it
  }
  return std::nullopt;
}

// With --mpi-helpers MPI lives in a helper process, never in the host: a server's helper that
// crashes (SIGKILL, SIGSEGV) mid-transfer fails only that transfer, with nothing reported loaded;
// the host keeps running and serves the next client through a new helper within seconds.
TEST(HelperFaultTest, AServersHelperKilledMidTransferCostsOnlyThatLoadAndANewOneServes) {
  for (int signal : {SIGKILL, SIGSEGV}) {
    SCOPED_TRACE(strsignal(signal));
    TempDir tmp;
    MakeCheckpoint(tmp / "model", 40, 16, 1, 53);
    ServerProcess server(tmp, tmp / "model", {"--mpi-helpers"});
    ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
    std::vector<std::string> victim_argv = HeldVictim(server.endpoint(), tmp / "model", tmp);
    victim_argv.push_back("--json");
    Child victim(victim_argv, tmp / "victim");
    ASSERT_TRUE(WaitUntilHeld(victim)) << victim.Stderr();
    const pid_t helper = ChildPid(server.child().pid(), "netloader-mpi-h");
    ASSERT_GT(helper, 0) << "the server runs its MPI in a helper";
    ASSERT_EQ(kill(helper, signal), 0);
    testing::WriteFile(tmp / "never", "");  // release the victim into a dead peer
    EXPECT_NE(victim.Wait(120s), 0) << victim.Stderr();
    const nlohmann::json summary = LastJsonLine(victim.Stdout());
    EXPECT_TRUE(summary.is_object() && summary.value("ok", true) == false) << victim.Stdout();
    EXPECT_TRUE(server.child().Running()) << "the host survives its helper";
    const auto again = ServedAgainWithin(tmp, server.endpoint(), tmp / "model", 30s);
    ASSERT_TRUE(again.has_value()) << server.child().Stderr();
    EXPECT_NE(ChildPid(server.child().pid(), "netloader-mpi-h"), helper);
    EXPECT_EQ(server.Stop(), 0) << server.child().Stderr();
  }
}

// A client's helper that crashes mid-transfer costs the load nothing it verified: the load
// resumes from the next source through a new helper, byte-identical.
TEST(HelperFaultTest, AClientsHelperKilledMidTransferResumesFromTheNextSource) {
  for (int signal : {SIGKILL, SIGSEGV}) {
    SCOPED_TRACE(strsignal(signal));
    TempDir tmp;
    MakeCheckpoint(tmp / "model", 40, 64, 1, 59);
    TwoSources sources(tmp / "model");
    ASSERT_TRUE(sources.ready());
    Child client(sources.Client(tmp / "model", tmp / "out",
                                {"--window", "2", "--testing-hold-at", "50", "--testing-hold-file",
                                 tmp / "go"}),
                 tmp / "client");
    ASSERT_TRUE(WaitUntilHeld(client)) << client.Stderr();
    const pid_t helper = ChildPid(client.pid(), "netloader-mpi-h");
    ASSERT_GT(helper, 0) << "the client runs its MPI in a helper";
    ASSERT_EQ(kill(helper, signal), 0);
    testing::WriteFile(tmp / "go", "");
    ASSERT_EQ(client.Wait(120s), 0) << client.Stderr();
    const nlohmann::json summary = LastJsonLine(client.Stdout());
    ASSERT_TRUE(summary.is_object()) << client.Stdout();
    ASSERT_EQ(summary["attempts"].size(), 2u) << summary.dump();
    EXPECT_NE(summary["attempts"][0]["status"], "OK");
    EXPECT_NE(summary["attempts"][0]["status"].get<std::string>().find("MPI helper"),
              std::string::npos)
        << summary.dump();
    EXPECT_EQ(summary["attempts"][1]["status"], "OK");
    EXPECT_EQ(summary["attempts"][0]["bytes"].get<uint64_t>() +
                  summary["attempts"][1]["bytes"].get<uint64_t>(),
              summary["bytes"].get<uint64_t>())
        << "what the first source delivered and verified was kept";
    ExpectSameCheckpoint(tmp / "model", tmp / "out");
    EXPECT_TRUE(sources.a->child().Running()) << "the source is unharmed";
  }
}

// 100 clients SIGKILLed at points spread from their start through the MPI handshake and the
// transfer: the server (its MPI in a helper) never wedges and never keeps a session, and serves
// a whole load afterwards. A helper that MPI aborts (UCX's wire-up assertion) is replaced.
TEST(HelperFaultTest, AHundredClientsKilledAnywhereLeaveTheServerServing) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 40, 32, 1, 71);
  ServerProcess server(tmp, tmp / "model", {"--mpi-helpers"});
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  // How long a whole load takes here: the kill points spread over it.
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(RunClient(tmp, "timing",
                      {"--source", server.endpoint(), "--model", tmp / "model", "--verify-only"})
                .exit_code,
            0);
  const auto whole = std::chrono::steady_clock::now() - start;
  constexpr int kKills = 100;
  for (int i = 0; i < kKills; ++i) {
    Child victim({Bin("netloader-client"), "--source", server.endpoint(), "--model", tmp / "model",
                  "--verify-only"},
                 tmp / ("victim-" + std::to_string(i % 4)));
    // A kill point, not a wait for something: spread evenly over one load's duration.
    std::this_thread::sleep_for(whole * i / kKills);
    victim.Signal(SIGKILL);
    victim.Wait(30s);
  }
  EXPECT_TRUE(server.child().Running()) << server.child().Stderr();
  ASSERT_TRUE(ServedAgainWithin(tmp, server.endpoint(), tmp / "model", 60s).has_value())
      << server.child().Stderr();
  // Every killed client's session ends (at the heartbeat deadline at the latest).
  nlohmann::json status;
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        ClientRun run = RunClient(tmp, "status", {"--status", server.endpoint()});
        status = run.summary;
        return run.exit_code == 0 && status.is_object() && status["sessions"] == 0;
      },
      60s))
      << status.dump();
}

// A shared rendezvous killed and started again (a new URI in the same file): the holder refuses
// meanwhile, naming it, and serves again through the new one without its host restarting.
TEST(HelperFaultTest, ARestartedSharedRendezvousServesAgainWithoutRestartingTheHost) {
  TempDir tmp, first, second;
  MakeCheckpoint(tmp / "model", 20, 4, 1, 61);
  auto rendezvous = std::make_unique<testing::Rendezvous>(first);
  ASSERT_TRUE(rendezvous->ready()) << rendezvous->child().Stderr();
  const std::string spec = "file:" + tmp / "rendezvous.uri";
  std::filesystem::copy_file(first / "rendezvous.uri", tmp / "rendezvous.uri");
  ServerProcess server(tmp, tmp / "model", {"--rendezvous", spec, "--mpi-helpers"});
  ASSERT_FALSE(server.endpoint().empty()) << server.child().Stderr();
  ASSERT_TRUE(ServedAgainWithin(tmp, server.endpoint(), tmp / "model", 30s).has_value());

  rendezvous->child().Signal(SIGKILL);
  ASSERT_EQ(rendezvous->child().Wait(30s), 128 + SIGKILL);
  ClientRun refused = RunClient(
      tmp, "refused", {"--source", server.endpoint(), "--model", tmp / "model", "--verify-only"});
  EXPECT_EQ(refused.exit_code, 5) << refused.stderr_text;
  EXPECT_NE(refused.stderr_text.find("rendezvous"), std::string::npos) << refused.stderr_text;
  ClientRun status = RunClient(tmp, "status", {"--status", server.endpoint()});
  EXPECT_EQ(status.summary["state"], "unavailable") << status.summary.dump();

  rendezvous = std::make_unique<testing::Rendezvous>(second);
  ASSERT_TRUE(rendezvous->ready()) << rendezvous->child().Stderr();
  std::filesystem::copy_file(second / "rendezvous.uri", tmp / "rendezvous.uri",
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_TRUE(ServedAgainWithin(tmp, server.endpoint(), tmp / "model", 30s).has_value())
      << server.child().Stderr();
  status = RunClient(tmp, "status", {"--status", server.endpoint()});
  EXPECT_EQ(status.summary["state"], "serving") << status.summary.dump();
  EXPECT_TRUE(server.child().Running());
}

// A relay chain with no shared rendezvous: A serves with a private one, B loads from A and
// serves while it loads (--serve), C loads from B while B is still held mid-load; every process
// runs its MPI in helpers. C gets every byte, and B sent it what B had verified.
TEST(HelperTest, ARelayServesWhileItLoadsWithNoSharedRendezvous) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 60, 32, 1, 67);
  ServerProcess a(tmp, tmp / "model", {"--mpi-helpers"});
  ASSERT_FALSE(a.endpoint().empty()) << a.child().Stderr();
  Child b(
      {Bin("netloader-client"), "--source", a.endpoint(), "--model", tmp / "model", "--verify-only",
       "--serve", "tcp://127.0.0.1:0", "--serve-endpoint-file", tmp / "b-endpoint", "--mpi-helpers",
       "--testing-hold-at", "10", "--testing-hold-file", tmp / "go"},
      tmp / "b");
  ASSERT_TRUE(WaitUntilHeld(b)) << b.Stderr();
  const std::string b_endpoint = testing::WaitForLine(tmp / "b-endpoint", 60s);
  ASSERT_FALSE(b_endpoint.empty()) << b.Stderr();
  Child c({Bin("netloader-client"), "--json", "--source", b_endpoint, "--model", tmp / "model",
           "--output", tmp / "out", "--mpi-helpers"},
          tmp / "c");
  ASSERT_TRUE(testing::WaitFor([&] { return ChildPid(c.pid(), "netloader-mpi-h") > 0; }, 60s))
      << "C reached B over MPI while B was held: " << c.Stderr();
  testing::WriteFile(tmp / "go", "");
  ASSERT_EQ(c.Wait(120s), 0) << c.Stderr();
  const nlohmann::json summary = LastJsonLine(c.Stdout());
  EXPECT_EQ(summary["source"], b_endpoint) << c.Stdout();
  ExpectSameCheckpoint(tmp / "model", tmp / "out");
  b.Signal(SIGTERM);
  EXPECT_EQ(b.Wait(20s), 0) << b.Stderr();
}

// A (netloader-server) -> B (an embedding engine: loads from A, then serves) -> C (client).
TEST(ChainTest, ALoadedInstanceServesTheNextOneAndTheBytesSurviveTwoHops) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 120, 24, 1, 21);
  ServerProcess a(tmp, tmp / "model");
  ASSERT_FALSE(a.endpoint().empty()) << a.child().Stderr();
  Child b({Bin("netloader-embed-example"), "--model", tmp / "model", "--source", a.endpoint(),
           "--endpoint-file", tmp / "b-endpoint"},
          tmp / "b");
  const std::string b_endpoint = testing::WaitForLine(tmp / "b-endpoint", 60s);
  ASSERT_FALSE(b_endpoint.empty()) << b.Stderr();
  ClientRun c = RunClient(
      tmp, "c", {"--source", b_endpoint, "--model", tmp / "model", "--output", tmp / "out"});
  ASSERT_EQ(c.exit_code, 0) << c.stderr_text;
  EXPECT_EQ(c.summary["source"], b_endpoint);
  EXPECT_TRUE(testing::ReadFile(tmp / "model/model.safetensors") ==
              testing::ReadFile(tmp / "out/model.safetensors"));
  b.Signal(SIGTERM);
  ASSERT_EQ(b.Wait(20s), 0) << b.Stderr();
  nlohmann::json summary = nlohmann::json::parse(b.Stdout(), nullptr, false);
  EXPECT_EQ(summary["loaded_from"], a.endpoint()) << b.Stdout();
  EXPECT_EQ(summary["served"], 1);
}

TEST(ChainFaultTest, AnInstanceWhoseSourceIsGoneLoadsFromDiskAndStillServes) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 30, 4, 1, 22);
  Child b({Bin("netloader-embed-example"), "--model", tmp / "model", "--source",
           "tcp://127.0.0.1:9", "--endpoint-file", tmp / "b-endpoint"},
          tmp / "b");
  const std::string b_endpoint = testing::WaitForLine(tmp / "b-endpoint", 60s);
  ASSERT_FALSE(b_endpoint.empty()) << b.Stderr();
  EXPECT_NE(b.Stderr().find("loading from disk"), std::string::npos) << b.Stderr();
  ClientRun c = RunClient(
      tmp, "c", {"--source", b_endpoint, "--model", tmp / "model", "--output", tmp / "out"});
  ASSERT_EQ(c.exit_code, 0) << c.stderr_text;
  EXPECT_TRUE(testing::ReadFile(tmp / "model/model.safetensors") ==
              testing::ReadFile(tmp / "out/model.safetensors"));
  b.Signal(SIGTERM);
  ASSERT_EQ(b.Wait(20s), 0);
  EXPECT_NE(b.Stdout().find("\"loaded_from\":\"disk\""), std::string::npos) << b.Stdout();
}

TEST(EmbeddedServerFaultTest, HostLoopKeepsRunningWhenAClientIsKilledMidTransfer) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 100, 256, 1, 43);
  Child host({Bin("host_loop_server"), tmp / "model", tmp / "endpoint"}, tmp / "host");
  const std::string endpoint = testing::WaitForLine(tmp / "endpoint", 30s);
  ASSERT_FALSE(endpoint.empty()) << host.Stderr();
  {
    Child victim(HeldVictim(endpoint, tmp / "model", tmp), tmp / "victim");
    ASSERT_TRUE(WaitUntilHeld(victim)) << victim.Stderr();
    victim.Signal(SIGKILL);
    EXPECT_EQ(victim.Wait(10s), 128 + SIGKILL);
  }
  ClientRun next =
      RunClient(tmp, "next", {"--source", endpoint, "--model", tmp / "model", "--verify-only"});
  EXPECT_EQ(next.exit_code, 0) << next.stderr_text;
  // Through the failed session and the next transfer alike.
  StopHostAndExpectItKeptTicking(host, 1);
}

TEST(EmbeddedServerTest, HostLoopKeepsRunningWhileItServesATransfer) {
  TempDir tmp;
  MakeCheckpoint(tmp / "model", 100, 128, 1, 17);
  Child host({Bin("host_loop_server"), tmp / "model", tmp / "endpoint"}, tmp / "host");
  const std::string endpoint = testing::WaitForLine(tmp / "endpoint", 30s);
  ASSERT_FALSE(endpoint.empty()) << host.Stderr();
  ClientRun run =
      RunClient(tmp, "client", {"--source", endpoint, "--model", tmp / "model", "--verify-only"});
  ASSERT_EQ(run.exit_code, 0) << run.stderr_text;
  StopHostAndExpectItKeptTicking(host, 1);
}

}  // namespace
}  // namespace netloader
