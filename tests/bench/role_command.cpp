#include "tests/bench/role_command.h"

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "tests/bench/fatal.h"

namespace netloader::bench {

using json = nlohmann::json;
using namespace std::chrono_literals;

// std::to_string's six decimals are not exact; 17 significant digits are.
std::string ChunkMibArgument(uint64_t chunk_bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", static_cast<double>(chunk_bytes) / (1 << 20));
  return text;
}

std::vector<std::string> RoleCommand::Argv(const std::string& role) const {
  std::vector<std::string> argv = {self, "--role", role};
  if (!rendezvous.empty()) argv.insert(argv.end(), {"--rendezvous", rendezvous});
  argv.insert(argv.end(),
              {"--chunk-mib", ChunkMibArgument(chunk_bytes), "--window", std::to_string(window)});
  if (!interface.empty()) argv.insert(argv.end(), {"--interface", interface});
  if (mpi_helpers) argv.push_back("--mpi-helpers");
  return argv;
}

std::vector<std::string> LoadArgv(const RoleCommand& command, const std::string& model,
                                  const std::vector<std::string>& sources, const LoadKind& kind) {
  RoleCommand load = command;
  if (kind.adopt) load.rendezvous.clear();
  std::vector<std::string> argv = load.Argv("load");
  argv.insert(argv.end(), {"--model", model, "--source", sources.at(0)});
  if (kind.direct) argv.push_back("--direct");
  if (!kind.verify) argv.push_back("--no-verify");
  if (kind.preinit) argv.push_back("--preinit");
  if (kind.overlap) argv.push_back("--overlap");
  for (size_t s = 1; s < sources.size(); ++s) argv.insert(argv.end(), {"--source", sources[s]});
  if (kind.stripe != 1) argv.insert(argv.end(), {"--stripe", std::to_string(kind.stripe)});
  if (kind.kill_pid > 0) argv.insert(argv.end(), {"--kill-pid", std::to_string(kind.kill_pid)});
  if (!kind.delta_from.empty()) argv.insert(argv.end(), {"--delta-from", kind.delta_from});
  for (const std::string& pattern : kind.select) argv.insert(argv.end(), {"--select", pattern});
  if (!kind.output.empty()) argv.insert(argv.end(), {"--output", kind.output});
  if (kind.in_memory_output) argv.push_back("--in-memory-output");
  if (kind.stop_at_half) argv.push_back("--stop-at-half");
  return argv;
}

std::vector<std::string> RawSendArgv(const RoleCommand& command, const std::string& model,
                                     const std::string& port_file, int peers) {
  std::vector<std::string> argv = command.Argv("raw-send");
  argv.insert(argv.end(),
              {"--model", model, "--port-file", port_file, "--peers", std::to_string(peers)});
  return argv;
}

std::vector<std::string> RawRecvArgv(const RoleCommand& command, const std::string& model,
                                     const std::string& port_file, int index) {
  std::vector<std::string> argv = command.Argv("raw-recv");
  argv.insert(argv.end(),
              {"--model", model, "--port-file", port_file + "." + std::to_string(index)});
  return argv;
}

json RunRoleChild(const std::vector<std::string>& argv, const std::string& log_prefix,
                  const std::string& name, std::chrono::seconds timeout) {
  testing::Child child(argv, log_prefix);
  const int code = child.Wait(timeout);
  json out = json::parse(child.Stdout(), nullptr, false);
  if (code != 0 || out.is_discarded()) {
    Die(name + " failed (exit " + std::to_string(code) +
        "): " + testing::ResolveCrashTrace(child.Stderr(), argv.at(0)));
  }
  return out;
}

ServeRole StartServeRole(
    const RoleCommand& command, const std::string& dir, const std::vector<std::string>& models,
    const std::vector<std::string>& extra, const std::string& name,
    const std::function<std::vector<std::string>(std::vector<std::string>)>& place) {
  // A --workdir used before still holds the last run's files: waiting for them must not find
  // those (a dead server's endpoints).
  std::filesystem::create_directories(dir);
  std::filesystem::remove(dir + "/endpoints");
  std::vector<std::string> argv = command.Argv("serve");
  argv.insert(argv.end(), {"--endpoint-file", dir + "/endpoints"});
  for (const std::string& model : models) argv.insert(argv.end(), {"--model", model});
  argv.insert(argv.end(), extra.begin(), extra.end());
  ServeRole serve;
  serve.child = std::make_unique<testing::Child>(place ? place(argv) : argv, dir + "/server");
  if (testing::WaitForLine(dir + "/endpoints", 120s).empty()) {
    Die(name + " did not start: " + serve.child->Stderr());
  }
  std::istringstream lines(testing::ReadFile(dir + "/endpoints"));
  for (std::string line; std::getline(lines, line);) serve.endpoints.push_back(line);
  return serve;
}

}  // namespace netloader::bench
