#include "tests/support/inproc_transport.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace netloader::transfer {
namespace {

// Two one-way queues between the two ends of a connection.
struct Pipe {
  std::mutex mu;  // guards queues and closed
  std::condition_variable cv;
  std::deque<std::vector<char>> queues[2];  // queues[s]: messages travelling towards side s
  bool closed[2] = {false, false};          // side s has gone away
};

class InprocChannel : public Channel {
 public:
  InprocChannel(std::shared_ptr<Pipe> pipe, int side) : pipe_(std::move(pipe)), side_(side) {}
  void Abandon() override {}
  ~InprocChannel() override {
    std::lock_guard<std::mutex> lock(pipe_->mu);
    pipe_->closed[side_] = true;
    pipe_->cv.notify_all();
  }

  Status Send(const ChunkList& chunks, const StreamOptions& options,
              const ChunkCallback& on_sent) override {
    const int peer = 1 - side_;
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (options.prepare) {
        Status prepared = options.prepare(i);
        if (!prepared.ok()) return prepared;
      }
      std::vector<char> message(chunks.bytes(i));
      size_t at = 0;
      for (size_t s = 0; s < chunks.span_count(i); ++s) {
        const Span& span = chunks.spans(i)[s];
        if (span.size) std::memcpy(message.data() + at, span.data, span.size);
        at += span.size;
      }
      std::unique_lock<std::mutex> lock(pipe_->mu);
      Status waited = Wait(lock, options, i, [&] {
        return pipe_->queues[peer].size() < static_cast<size_t>(options.window);
      });
      if (!waited.ok()) return waited;
      pipe_->queues[peer].push_back(std::move(message));
      pipe_->cv.notify_all();
      lock.unlock();
      if (on_sent) {
        Status status = on_sent(i);
        if (!status.ok()) return status;
      }
    }
    return Status::Ok();
  }

  Status Receive(const ChunkList& chunks, const StreamOptions& options,
                 const ChunkCallback& on_received) override {
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (options.prepare) {
        Status prepared = options.prepare(i);
        if (!prepared.ok()) return prepared;
      }
      std::unique_lock<std::mutex> lock(pipe_->mu);
      Status waited = Wait(lock, options, i, [&] { return !pipe_->queues[side_].empty(); });
      if (!waited.ok()) return waited;
      std::vector<char> message = std::move(pipe_->queues[side_].front());
      pipe_->queues[side_].pop_front();
      pipe_->cv.notify_all();
      lock.unlock();
      if (message.size() != chunks.bytes(i)) {
        return Status(StatusCode::kTransferFailed, "chunk " + std::to_string(i) + ": expected " +
                                                       std::to_string(chunks.bytes(i)) +
                                                       " bytes, received " +
                                                       std::to_string(message.size()));
      }
      size_t at = 0;
      for (size_t s = 0; s < chunks.span_count(i); ++s) {
        const Span& span = chunks.spans(i)[s];
        if (span.size) std::memcpy(span.data, message.data() + at, span.size);
        at += span.size;
      }
      if (on_received) {
        Status status = on_received(i);
        if (!status.ok()) return status;
      }
    }
    return Status::Ok();
  }

 private:
  // Waits for `ready`, the peer closing, cancellation or the stall timeout, polling `cancel`.
  template <typename Pred>
  Status Wait(std::unique_lock<std::mutex>& lock, const StreamOptions& options, size_t chunk,
              Pred ready) {
    const auto give_up = Clock::now() + options.stall_timeout;
    while (!ready()) {
      if (pipe_->closed[1 - side_] && pipe_->queues[side_].empty()) {
        return Status(StatusCode::kTransferFailed,
                      "peer closed the connection at chunk " + std::to_string(chunk));
      }
      if (options.cancel && options.cancel->load()) {
        return Status(StatusCode::kCancelled, "stream cancelled at chunk " + std::to_string(chunk));
      }
      if (Clock::now() >= give_up) {
        return Status(StatusCode::kTimeout, "no progress for " +
                                                std::to_string(options.stall_timeout.count()) +
                                                " ms at chunk " + std::to_string(chunk));
      }
      pipe_->cv.wait_for(lock, std::chrono::milliseconds(10));
    }
    return Status::Ok();
  }

  std::shared_ptr<Pipe> pipe_;
  int side_;
};

// Listeners waiting for a peer, by address.
struct Registry {
  std::mutex mu;  // guards pending and next_id
  std::condition_variable cv;
  std::map<std::string, std::shared_ptr<Pipe>> pending;  // address -> pipe once a peer connected
  std::map<std::string, bool> open;                      // addresses with a live listener
  uint64_t next_id = 0;
};

Registry& GlobalRegistry() {
  static Registry* registry = new Registry();  // never destroyed: detached threads may use it
  return *registry;
}

class InprocListener : public Listener {
 public:
  explicit InprocListener(std::string address) : address_(std::move(address)) {}
  ~InprocListener() override {
    Registry& r = GlobalRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.open.erase(address_);
    r.pending.erase(address_);
  }
  const std::string& address() const override { return address_; }
  std::string rendezvous() const override { return "inproc"; }
  Result<std::unique_ptr<Channel>> Accept(Clock::time_point deadline,
                                          const std::atomic<bool>* cancel) override {
    Registry& r = GlobalRegistry();
    std::unique_lock<std::mutex> lock(r.mu);
    while (!r.pending.count(address_)) {
      if (cancel && cancel->load()) return Status(StatusCode::kCancelled, "accept cancelled");
      if (Clock::now() >= deadline) {
        return Status(StatusCode::kTimeout, "no peer connected to " + address_ + " in time");
      }
      r.cv.wait_for(lock, std::chrono::milliseconds(10));
    }
    std::shared_ptr<Pipe> pipe = r.pending[address_];
    return std::unique_ptr<Channel>(new InprocChannel(pipe, 0));
  }

 private:
  std::string address_;
};

class InprocTransport : public Transport {
 public:
  std::string rendezvous() const override { return "inproc"; }
  Status health() const override { return Status::Ok(); }
  Result<std::unique_ptr<Listener>> Listen() override {
    Registry& r = GlobalRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    std::string address = "inproc-port-" + std::to_string(r.next_id++);
    r.open[address] = true;
    return std::unique_ptr<Listener>(new InprocListener(address));
  }
  Result<std::unique_ptr<Channel>> Connect(const std::string& address,
                                           Clock::time_point /*deadline*/,
                                           const std::atomic<bool>* /*cancel*/) override {
    Registry& r = GlobalRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.open.count(address) || r.pending.count(address)) {
      return Status(StatusCode::kUnavailable, "no listener at " + address);
    }
    auto pipe = std::make_shared<Pipe>();
    r.pending[address] = pipe;
    r.cv.notify_all();
    return std::unique_ptr<Channel>(new InprocChannel(pipe, 1));
  }
};

}  // namespace

std::shared_ptr<Transport> MakeInprocTransport() { return std::make_shared<InprocTransport>(); }

namespace {

class InprocDataPlane : public DataPlane {
 public:
  explicit InprocDataPlane(std::shared_ptr<Transport> transport)
      : transport_(std::move(transport)) {}
  std::string bound_rendezvous() const override { return ""; }
  Result<std::shared_ptr<Transport>> Start(const std::string&) override { return transport_; }

 private:
  const std::shared_ptr<Transport> transport_;
};

}  // namespace

std::shared_ptr<DataPlane> MakeInprocDataPlane(std::shared_ptr<Transport> transport) {
  return std::make_shared<InprocDataPlane>(std::move(transport));
}

}  // namespace netloader::transfer
