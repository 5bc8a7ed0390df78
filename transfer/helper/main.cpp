// netloader-mpi-helper: one MPI runtime in a process of its own, started by netloader in a host
// (DESIGN.md, "MPI in helper processes"). It talks to its host over the socket on --fd, maps the
// host's shared memory regions it is handed, and runs the MPI side of listeners and channels
// (transfer/mpi/) on them. It exits when the host closes the socket or dies. Not for people to
// run by hand.

#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "transfer/helper/link.h"
#include "transfer/mpi/transport.h"

namespace netloader::transfer::helper {
namespace {

constexpr auto kForever = std::chrono::hours(24 * 365);

// The host's regions a channel has mapped, by id; unmapped with it.
class Regions {
 public:
  Regions() = default;
  Regions(const Regions&) = delete;
  Regions& operator=(const Regions&) = delete;
  ~Regions() {
    for (auto& [id, region] : regions_) munmap(region.base, region.size);
  }
  Status Map(uint64_t id, uint64_t size, int fd) {
    // Populated: the host has faulted the pages in already, so this only fills in page tables,
    // which the kernel would otherwise do one 4 KiB fault at a time mid-transfer.
    void* memory = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (memory == MAP_FAILED) {
      return Status(StatusCode::kUnavailable, "mapping a region of " + std::to_string(size) +
                                                  " bytes: " + std::strerror(errno));
    }
    std::lock_guard<std::mutex> lock(mu_);
    regions_[id] = {static_cast<char*>(memory), size};
    return Status::Ok();
  }
  // The address of [offset, offset + size) of region `id`; nullptr when it lies outside.
  char* Find(uint64_t id, uint64_t offset, uint64_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = regions_.find(id);
    if (it == regions_.end() || offset > it->second.size || size > it->second.size - offset) {
      return nullptr;
    }
    return it->second.base + offset;
  }

 private:
  struct Region {
    char* base;
    uint64_t size;
  };
  std::mutex mu_;  // guards regions_
  std::map<uint64_t, Region> regions_;
};

Message StatusMessage(Op op, const Status& status) {
  Message message(op);
  message.Put(status);
  return message;
}

// One listener or channel: what the host asks on its own socket, in order.
class ChannelServer {
 public:
  ChannelServer(Link link, std::shared_ptr<Transport> transport)
      : link_(std::move(link)), transport_(std::move(transport)) {}

  void Run() {
    std::thread watcher([this] { WatchHangUp(); });
    while (true) {
      int passed = -1;
      Result<Message> message = link_.Receive(Clock::now() + kForever, nullptr, &passed);
      if (!message.ok()) break;
      if (message->op() == Op::kMap) {
        const uint64_t id = message->U64();
        const uint64_t size = message->U64();
        Status mapped = passed >= 0 ? regions_.Map(id, size, passed)
                                    : Status(StatusCode::kInternal, "no region passed");
        if (!Reply(StatusMessage(Op::kStatus, mapped))) break;
        continue;
      }
      if (passed >= 0) close(passed);
      if (!Handle(*message)) break;
    }
    finished_ = true;
    watcher.join();
    channel_.reset();  // a bounded disconnect, or none once abandoned
    listener_.reset();
  }

 private:
  // The host shut its end (it gave up, or died): whatever waits is cancelled.
  void WatchHangUp() {
    while (!finished_.load()) {
      pollfd p{link_.fd(), POLLRDHUP, 0};
      if (poll(&p, 1, 50) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
        hung_up_ = true;
        return;
      }
    }
  }

  bool Reply(const Message& message) { return link_.Send(message).ok(); }

  bool Handle(Message& message) {
    switch (message.op()) {
      case Op::kListen: {
        Result<std::unique_ptr<Listener>> listener = transport_->Listen();
        if (!listener.ok()) return Reply(StatusMessage(Op::kStatus, listener.status()));
        listener_ = std::move(*listener);
        Message port(Op::kPort);
        port.Str(listener_->address());
        return Reply(port);
      }
      case Op::kAccept: {
        const auto deadline = Clock::now() + std::chrono::milliseconds(message.U64());
        if (!listener_)
          return Reply(StatusMessage(Op::kStatus, Status(StatusCode::kInternal, "no listener")));
        Result<std::unique_ptr<Channel>> channel = listener_->Accept(deadline, &hung_up_);
        if (channel.ok()) channel_ = std::move(*channel);
        return Reply(StatusMessage(Op::kStatus, channel.status()));
      }
      case Op::kConnect: {
        const std::string address = message.Str();
        const auto deadline = Clock::now() + std::chrono::milliseconds(message.U64());
        Result<std::unique_ptr<Channel>> channel =
            transport_->Connect(address, deadline, &hung_up_);
        if (channel.ok()) channel_ = std::move(*channel);
        return Reply(StatusMessage(Op::kStatus, channel.status()));
      }
      case Op::kStream:
        return Reply(StatusMessage(Op::kEnd, Stream(message)));
      case Op::kAbandon:
        if (channel_) channel_->Abandon();
        return true;
      default:
        return Reply(
            StatusMessage(Op::kStatus, Status(StatusCode::kInternal, "unexpected request")));
    }
  }

  Status Stream(Message& message) {
    if (!channel_) return Status(StatusCode::kInternal, "no channel");
    StreamOptions options;
    options.stall_timeout = std::chrono::milliseconds(message.U64());
    const bool sending = message.U64() != 0;
    options.window = static_cast<int>(message.U64());
    options.cancel = &hung_up_;
    ChunkList chunks;
    const uint64_t n = message.U64();
    for (uint64_t i = 0; i < n && !message.bad(); ++i) {
      chunks.BeginChunk();
      const uint64_t spans = message.U64();
      for (uint64_t s = 0; s < spans && !message.bad(); ++s) {
        const uint64_t id = message.U64();
        const uint64_t offset = message.U64();
        const uint64_t size = message.U64();
        char* data = regions_.Find(id, offset, size);
        if (data == nullptr) {
          return Status(StatusCode::kInvalidArgument, "a span outside the mapped regions");
        }
        chunks.AddSpan(data, size);
      }
    }
    if (message.bad()) return Status(StatusCode::kInvalidArgument, "a truncated chunk table");
    // Chunk j is posted once the host says so (it has prepared it, and finished with chunk
    // j - window); each completion is reported at once.
    options.prepare = [this](size_t j) -> Status {
      Result<Message> go = link_.Receive(Clock::now() + kForever, &hung_up_);
      if (!go.ok()) return go.status();
      if (go->op() != Op::kGo || go->U64() != j) {
        return Status(StatusCode::kInternal,
                      "the host sent no go-ahead for chunk " + std::to_string(j));
      }
      return Status::Ok();
    };
    auto done = [this](size_t i) -> Status {
      Message report(Op::kDone);
      report.U64(i);
      return link_.Send(report);
    };
    return sending ? channel_->Send(chunks, options, done)
                   : channel_->Receive(chunks, options, done);
  }

  Link link_;
  std::shared_ptr<Transport> transport_;
  Regions regions_;  // declared before channel_, so unmapped after it is gone
  std::atomic<bool> hung_up_{false};
  std::atomic<bool> finished_{false};
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<Channel> channel_;
};

int Run(int argc, char** argv) {
  int fd = -1;
  TransportOptions options;
  std::string rendezvous;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--fd") fd = std::atoi(value.c_str());
    if (flag == "--rendezvous") rendezvous = value;
    if (flag == "--interface") options.interface = value;
    if (flag == "--ompi-server") options.ompi_server = value;
    if (flag == "--startup-timeout-ms")
      options.startup_timeout = std::chrono::milliseconds(std::atoll(value.c_str()));
  }
  if (fd < 0) {
    std::fprintf(stderr, "netloader-mpi-helper is started by netloader, not by hand\n");
    return 2;
  }
  Link host(fd);
  Result<std::shared_ptr<Transport>> transport = MakeMpiTransport(options, rendezvous);
  if (!transport.ok()) {
    (void)host.Send(StatusMessage(Op::kFailed, transport.status()));
    return 1;
  }
  Message ready(Op::kReady);
  ready.Str((*transport)->rendezvous());
  if (!host.Send(ready).ok()) return 1;
  std::atomic<int> channels{0};
  while (true) {
    int passed = -1;
    Result<Message> message = host.Receive(Clock::now() + kForever, nullptr, &passed);
    if (!message.ok()) break;  // the host closed the socket or died
    switch (message->op()) {
      case Op::kHealth:
        (void)host.Send(StatusMessage(Op::kStatus, (*transport)->health()));
        break;
      case Op::kOpen:
        if (passed < 0) break;
        channels++;
        std::thread([&channels, link = Link(passed), t = *transport]() mutable {
          ChannelServer(std::move(link), std::move(t)).Run();
          channels--;
        }).detach();
        break;
      default:
        if (passed >= 0) close(passed);
        break;
    }
  }
  // MPI_Finalize (bounded, at exit) only when no channel is still inside MPI.
  if (channels.load() > 0) _exit(0);
  return 0;
}

}  // namespace
}  // namespace netloader::transfer::helper

int main(int argc, char** argv) { return netloader::transfer::helper::Run(argc, argv); }
