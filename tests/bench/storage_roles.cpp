#include "tests/bench/storage_roles.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "netloader/client.h"
#include "netloader/safetensors.h"
#include "netloader/secret.h"
#include "netloader/server.h"
#include "tests/bench/fatal.h"
#include "tests/bench/usage.h"

namespace netloader::bench {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

std::vector<std::string> ShardFiles(const std::string& model) {
  std::vector<std::string> files;
  for (const auto& shard : Check(ReadCheckpointLayout(model), "layout").shards) {
    files.push_back(shard.path);
  }
  return files;
}

// A listening TCP socket on `address`, a port the kernel picks; *port is set to it.
int Listen(const std::string& address, uint16_t* port) {
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_port = 0;
  inet_pton(AF_INET, address.c_str(), &at.sin_addr);
  socklen_t length = sizeof at;
  if (bind(listener, reinterpret_cast<sockaddr*>(&at), sizeof at) != 0 ||
      listen(listener, 64) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&at), &length) != 0) {
    Die("storage: cannot listen on " + address);
  }
  *port = ntohs(at.sin_port);
  return listener;
}

// Every file, whole and in order, down `connection`; then closes it.
void SendFiles(int connection, const std::vector<std::string>& files) {
  for (const std::string& file : files) {
    const int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
    off_t offset = 0;
    struct stat info {};
    fstat(fd, &info);
    while (offset < info.st_size && sendfile(connection, fd, &offset, info.st_size - offset) > 0) {
    }
    close(fd);
  }
  close(connection);
}

// A connected TCP socket to "ADDRESS:PORT".
int Connect(const std::string& source) {
  const size_t colon = source.rfind(':');
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(source.substr(colon + 1))));
  inet_pton(AF_INET, source.substr(0, colon).c_str(), &address.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    Die("storage: cannot connect to " + source);
  }
  return fd;
}

}  // namespace

// Readers are served each on a thread of its own, all at once, as a file server does.
int RoleStorageServe(const RoleArgs& args) {
  Termination termination;
  const std::vector<std::string> files = ShardFiles(args.models.at(0));
  uint16_t port = 0;
  const int listener = Listen(args.listen, &port);
  PublishFile(args.endpoint_file, args.listen + ":" + std::to_string(port) + "\n");
  std::thread acceptor([&] {
    while (true) {
      const int connection = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (connection < 0) return;
      std::thread(SendFiles, connection, files).detach();
    }
  });
  acceptor.detach();
  termination.Wait();
  return 0;
}

namespace {

// Reads every file of `layout` from the storage host at `source`, whole and in order, into
// `model`'s tensors (storage order, as HostModel lays them out). Returns the bytes read.
uint64_t ReadFromStorage(const std::string& source, const CheckpointLayout& layout,
                         const ModelView& model) {
  const int fd = Connect(source);
  uint64_t got = 0;
  size_t t = 0;
  std::vector<char> file;
  for (const ShardLayout& shard : layout.shards) {
    struct stat info {};
    if (stat(shard.path.c_str(), &info) != 0) Die("storage: cannot stat " + shard.path);
    file.resize(static_cast<size_t>(info.st_size));
    for (size_t at = 0; at < file.size();) {
      const ssize_t n = read(fd, file.data() + at, file.size() - at);
      if (n <= 0) Die("storage: the stream ended inside " + shard.path);
      at += static_cast<size_t>(n);
    }
    got += file.size();
    for (const TensorSpec& spec : shard.tensors) {
      const TensorView& tensor = model.tensors.at(t++);
      std::memcpy(tensor.data, file.data() + spec.file_offset, spec.size_bytes);
    }
  }
  close(fd);
  return got;
}

}  // namespace

int RoleColdStart(const RoleArgs& args) {
  Termination termination;
  const auto start = Clock::now();
  const CheckpointLayout layout = Check(ReadCheckpointLayout(args.models.at(0)), "layout");
  HostModel model = Check(HostModel::Allocate(layout), "allocate");
  const std::string secret = Check(LoadOrCreateSecret(DefaultSecretPath()), "secret");
  Check(InitializeTransport(Transport(args)), "InitializeTransport");
  ServerOptions serving;
  serving.listen = args.listen;
  serving.transport = Transport(args);
  serving.registry = args.registry;
  serving.fanout = args.fanout;
  serving.max_concurrent_transfers = 8;
  serving.window = args.window;
  serving.chunk_bytes = args.chunk_bytes;
  serving.secret = secret;
  std::unique_ptr<Server> relay = Check(Server::StartRelay(serving, model.view()), "the relay");
  std::cerr << "ready" << std::endl;
  while (access(args.start_file.c_str(), F_OK) != 0 && Since(start) < 600) {
    std::this_thread::sleep_for(1ms);
  }
  const auto begin = Clock::now();
  ClientOptions options;
  options.registry = args.registry;
  options.relay = relay.get();
  options.transport = Transport(args);
  options.window = args.window;
  options.secret = secret;
  Result<LoadStats> loaded = Load(options, model.view());
  json out = {{"ok", true}};
  if (loaded.ok()) {
    out["from"] = loaded->source;
  } else if (loaded.status().message().find("cold start") != std::string::npos) {
    out["storage_bytes"] = ReadFromStorage(args.sources.at(0), layout, model.view());
    Check(relay->MarkLoaded(), "serving what storage gave");
    out["from"] = "storage";
  } else {
    Die("cold-start load: " + loaded.status().ToString());
  }
  out["seconds"] = Since(begin);
  std::cout << out.dump() << std::endl;
  termination.Wait();
  relay->Stop();
  return 0;
}

int RoleStorageRead(const RoleArgs& args) {
  const auto start = Clock::now();
  uint64_t expected = 0;
  for (const std::string& file : ShardFiles(args.models.at(0))) {
    struct stat info {};
    stat(file.c_str(), &info);
    expected += static_cast<uint64_t>(info.st_size);
  }
  std::vector<char> memory(expected);
  std::fill(memory.begin(), memory.end(), 0);  // fresh memory, faulted in before the start
  std::cerr << "ready" << std::endl;
  while (access(args.start_file.c_str(), F_OK) != 0 && Since(start) < 600) {
    std::this_thread::sleep_for(1ms);
  }
  const auto begin = Clock::now();
  const int fd = Connect(args.sources.at(0));
  uint64_t got = 0;
  while (got < expected) {
    const ssize_t n = read(fd, memory.data() + got, expected - got);
    if (n <= 0) Die("storage: the stream ended after " + std::to_string(got) + " bytes");
    got += static_cast<uint64_t>(n);
  }
  close(fd);
  std::cout << json{{"ok", true}, {"bytes", got}, {"seconds", Since(begin)}}.dump() << std::endl;
  return 0;
}

}  // namespace netloader::bench
