#include "transfer/helper/transport.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "transfer/helper/process.h"
#include "transfer/shared_memory.h"

namespace netloader::transfer::helper {
namespace {

using std::chrono::milliseconds;

milliseconds Left(Clock::time_point deadline) {
  return std::max(milliseconds(0),
                  std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
}

// Idle client-side helpers, by rendezvous, for the next load from a source on the same one.
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // outlives static destructors
    return *pool;
  }

  Result<std::shared_ptr<Process>> Take(const TransportOptions& options, const std::string& spec) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      Expire();
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        // A source names its rendezvous by URI; a pre-started helper may have been given the
        // same one as file:PATH.
        if (it->process->spec() != spec && it->process->rendezvous() != spec) continue;
        std::shared_ptr<Process> process = std::move(it->process);
        idle_.erase(it);
        if (process->Alive().ok()) return process;
        break;
      }
    }
    return Process::Start(options, spec);
  }

  void Give(std::shared_ptr<Process> process) {
    if (!process->Alive().ok()) return;
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back({std::move(process), Clock::now()});
    Expire();
  }

 private:
  struct Idle {
    std::shared_ptr<Process> process;
    Clock::time_point since;
  };
  static constexpr size_t kMaxIdle = 4;
  static constexpr std::chrono::seconds kMaxIdleTime{60};

  void Expire() {
    while (idle_.size() > kMaxIdle) idle_.pop_front();
    while (!idle_.empty() && Clock::now() - idle_.front().since > kMaxIdleTime) idle_.pop_front();
  }

  std::mutex mu_;  // guards idle_
  std::deque<Idle> idle_;
};

// Staging slots in shared memory, for chunks whose memory the helper cannot map (memory the
// host allocated itself): chunk i uses slot i % window, which the stream's window rule keeps
// free (transfer/transport.h, StreamOptions::prepare).
class Staging {
 public:
  ~Staging() { UnmapSharedMemory(memory_, bytes_); }
  Status Reserve(size_t slots, size_t slot_bytes) {
    if (slots * slot_bytes <= bytes_ && slot_bytes <= slot_bytes_) return Status::Ok();
    UnmapSharedMemory(memory_, bytes_);
    bytes_ = slots * slot_bytes;
    slot_bytes_ = slot_bytes;
    memory_ = static_cast<char*>(MapSharedMemory(bytes_, 4096));
    if (memory_ == nullptr) {
      bytes_ = 0;
      return Status(StatusCode::kUnavailable, "cannot map a staging ring of " +
                                                  std::to_string(slots * slot_bytes) +
                                                  " bytes: " + std::strerror(errno));
    }
    return Status::Ok();
  }
  char* slot(size_t index, size_t slots) const { return memory_ + (index % slots) * slot_bytes_; }
  const char* memory() const { return memory_; }
  size_t bytes() const { return bytes_; }

 private:
  char* memory_ = nullptr;
  size_t bytes_ = 0;
  size_t slot_bytes_ = 0;
};

// The chunk table a helper is sent: each span as (region, offset, size).
struct Table {
  Message message{Op::kStream};
  std::vector<SharedRegion> regions;
  std::vector<bool> staged;
};

class HelperChannel : public Channel {
 public:
  HelperChannel(std::shared_ptr<Process> process, Link link)
      : process_(std::move(process)), link_(std::move(link)) {}
  ~HelperChannel() override {
    if (abandoned_ && !broken_) (void)link_.Send(Message(Op::kAbandon));
    // Closing the socket ends the channel in the helper (a bounded disconnect).
  }

  Status Send(const ChunkList& chunks, const StreamOptions& options,
              const ChunkCallback& on_sent) override {
    return Stream(chunks, options, on_sent, /*sending=*/true);
  }
  Status Receive(const ChunkList& chunks, const StreamOptions& options,
                 const ChunkCallback& on_received) override {
    return Stream(chunks, options, on_received, /*sending=*/false);
  }
  void Abandon() override { abandoned_ = true; }

 private:
  Result<Table> BuildTable(const ChunkList& chunks, const StreamOptions& options, size_t window,
                           bool sending) {
    Table table;
    table.message.U64(static_cast<uint64_t>(options.stall_timeout.count()))
        .U64(sending ? 1 : 0)
        .U64(window);
    // Each span's region, looked up once; a chunk with a span outside them all is staged.
    std::vector<std::optional<SharedRegion>> found;
    table.staged.resize(chunks.size());
    size_t slot_bytes = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const Span* spans = chunks.spans(i);
      for (size_t s = 0; s < chunks.span_count(i); ++s) {
        found.push_back(FindSharedRegion(spans[s].data, spans[s].size));
        if (!found.back()) table.staged[i] = true;
      }
      if (table.staged[i]) slot_bytes = std::max<size_t>(slot_bytes, chunks.bytes(i));
    }
    std::optional<SharedRegion> ring;
    if (slot_bytes > 0) {
      Status reserved = staging_.Reserve(window, slot_bytes);
      if (!reserved.ok()) return reserved;
      ring = FindSharedRegion(staging_.memory(), staging_.bytes());
    }
    auto add = [&](const SharedRegion& region, const void* data, size_t size) {
      table.message.U64(region.id)
          .U64(static_cast<uint64_t>(static_cast<const char*>(data) - region.base))
          .U64(size);
      if (std::none_of(table.regions.begin(), table.regions.end(),
                       [&](const SharedRegion& r) { return r.id == region.id; })) {
        table.regions.push_back(region);
      }
    };
    table.message.U64(chunks.size());
    size_t span = 0;  // position in `found`
    for (size_t i = 0; i < chunks.size(); ++i) {
      const Span* spans = chunks.spans(i);
      if (table.staged[i]) {
        table.message.U64(1);
        add(*ring, staging_.slot(i, window), chunks.bytes(i));
        span += chunks.span_count(i);
        continue;
      }
      table.message.U64(chunks.span_count(i));
      for (size_t s = 0; s < chunks.span_count(i); ++s) {
        add(*found[span++], spans[s].data, spans[s].size);
      }
    }
    return table;
  }

  // Makes sure the helper has mapped `regions` for this channel (it unmaps them when the channel
  // ends, so that nothing a long-lived helper maps outlives the channel that needed it).
  Status Map(const std::vector<SharedRegion>& regions) {
    for (const SharedRegion& region : regions) {
      if (mapped_.count(region.id)) continue;
      Message map(Op::kMap);
      map.U64(region.id).U64(region.size);
      Status status = link_.Send(map, region.fd);
      Result<Message> reply =
          status.ok() ? link_.Receive(Clock::now() + kAnswerTimeout) : Result<Message>(status);
      if (!reply.ok()) return reply.status();
      status = reply->GetStatus();
      if (!status.ok()) return status;
      mapped_.insert(region.id);
    }
    return Status::Ok();
  }

  // Copies chunk i between its spans and its staging slot.
  void Copy(const ChunkList& chunks, size_t i, size_t window, bool to_slot) {
    char* slot = staging_.slot(i, window);
    const Span* spans = chunks.spans(i);
    for (size_t s = 0; s < chunks.span_count(i); ++s) {
      if (to_slot) {
        std::memcpy(slot, spans[s].data, spans[s].size);
      } else {
        std::memcpy(spans[s].data, slot, spans[s].size);
      }
      slot += spans[s].size;
    }
  }

  // Stops the stream: the helper sees its socket close and cancels what it had in flight. A
  // receiving helper is killed, so that no byte lands in the host's memory after this returns.
  Status Fail(Status status, bool sending) {
    broken_ = true;
    link_.Shutdown();
    if (!sending) process_->Kill();
    return status;
  }

  // What the helper's silence or death means, as the stream's failure.
  Status Lost(const Status& why, const char* verb) {
    if (why.code() == StatusCode::kCancelled) {
      return Status(StatusCode::kCancelled, std::string(verb) + " cancelled");
    }
    Status alive = process_->Alive();
    if (!alive.ok()) return Status(StatusCode::kTransferFailed, alive.message() + " mid-" + verb);
    if (why.code() == StatusCode::kTimeout) {
      process_->Kill();
      return Status(StatusCode::kTimeout, "the MPI helper (pid " + std::to_string(process_->pid()) +
                                              ") stopped answering mid-" + verb +
                                              " and was killed");
    }
    return Status(StatusCode::kTransferFailed, why.message());
  }

  Status Stream(const ChunkList& chunks, const StreamOptions& options, const ChunkCallback& on_done,
                bool sending) {
    const char* verb = sending ? "send" : "receive";
    if (broken_) return Status(StatusCode::kTransferFailed, "the MPI channel failed earlier");
    const size_t n = chunks.size();
    const size_t window = static_cast<size_t>(std::max(1, options.window));
    Result<Table> table = BuildTable(chunks, options, window, sending);
    if (!table.ok()) return table.status();
    Status status = Map(table->regions);
    if (status.ok()) status = link_.Send(table->message);
    if (!status.ok()) return Fail(Lost(status, verb), sending);
    auto go = [&](size_t j) -> Status {
      if (options.prepare) {
        Status prepared = options.prepare(j);
        if (!prepared.ok()) return prepared;
      }
      if (sending && table->staged[j]) Copy(chunks, j, window, /*to_slot=*/true);
      Message message(Op::kGo);
      message.U64(j);
      Status sent = link_.Send(message);
      return sent.ok() ? sent : Lost(sent, verb);
    };
    for (size_t j = 0; j < std::min(window, n); ++j) {
      status = go(j);
      if (!status.ok()) return Fail(status, sending);
    }
    while (true) {
      Result<Message> message =
          link_.Receive(Clock::now() + options.stall_timeout + kAnswerTimeout, options.cancel);
      if (!message.ok()) return Fail(Lost(message.status(), verb), sending);
      if (message->op() == Op::kEnd) {
        status = message->GetStatus();
        return status.ok() ? status : Fail(status, sending);
      }
      if (message->op() != Op::kDone) {
        return Fail(Status(StatusCode::kInternal, "the MPI helper sent an unexpected message"),
                    sending);
      }
      const size_t i = message->U64();
      if (i >= n)
        return Fail(Status(StatusCode::kInternal, "the MPI helper named no chunk"), sending);
      if (!sending && table->staged[i]) Copy(chunks, i, window, /*to_slot=*/false);
      if (on_done) {
        status = on_done(i);
        if (!status.ok()) return Fail(status, sending);
      }
      if (i + window < n) {
        status = go(i + window);
        if (!status.ok()) return Fail(status, sending);
      }
    }
  }

  std::shared_ptr<Process> process_;
  Link link_;
  Staging staging_;
  std::set<uint64_t> mapped_;  // regions the helper has mapped for this channel
  bool abandoned_ = false;
  bool broken_ = false;  // a stream failed; the socket is shut down
};

class HelperListener : public Listener {
 public:
  HelperListener(std::shared_ptr<Process> process, Link link, std::string port)
      : process_(std::move(process)), link_(std::move(link)), port_(std::move(port)) {}
  const std::string& address() const override { return port_; }
  std::string rendezvous() const override { return process_->rendezvous(); }

  Result<std::unique_ptr<Channel>> Accept(Clock::time_point deadline,
                                          const std::atomic<bool>* cancel) override {
    Message accept(Op::kAccept);
    accept.U64(static_cast<uint64_t>(Left(deadline).count()));
    Status sent = link_.Send(accept);
    if (!sent.ok()) return process_->Alive().ok() ? sent : process_->Alive();
    Result<Message> reply = link_.Receive(deadline + kAnswerTimeout, cancel);
    if (!reply.ok()) {
      link_.Shutdown();  // the helper gives up its accept
      if (reply.status().code() == StatusCode::kCancelled) {
        return Status(StatusCode::kCancelled, "MPI_Comm_accept was cancelled");
      }
      Status alive = process_->Alive();
      return alive.ok() ? reply.status() : alive;
    }
    Status accepted = reply->GetStatus();
    if (!accepted.ok()) return accepted;
    return std::unique_ptr<Channel>(new HelperChannel(process_, std::move(link_)));
  }

 private:
  std::shared_ptr<Process> process_;
  Link link_;
  std::string port_;
};

class HelperTransport : public Transport {
 public:
  HelperTransport(TransportOptions options, std::shared_ptr<Process> first, bool serving)
      : options_(std::move(options)), serving_(serving), current_(std::move(first)) {}
  ~HelperTransport() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    if (replacer_.joinable()) replacer_.join();
    if (!serving_) Pool::Get().Give(std::move(current_));
  }

  std::string rendezvous() const override { return Current()->rendezvous(); }

  Status health() const override {
    std::shared_ptr<Process> process = Current();
    Status status = process->Health();
    if (status.ok() || !serving_) return status;
    Replace(process);
    return Status(StatusCode::kUnavailable, status.message() + "; a new MPI helper is starting");
  }

  Result<std::unique_ptr<Listener>> Listen() override {
    std::shared_ptr<Process> process = Current();
    if (serving_ && ++process->sessions >= kSessionsPerHelper) Replace(process);
    Result<Link> link = process->Open();
    if (!link.ok()) return Unusable(process, link.status());
    Status sent = link->Send(Message(Op::kListen));
    Result<Message> reply =
        sent.ok() ? link->Receive(Clock::now() + kAnswerTimeout) : Result<Message>(sent);
    if (!reply.ok()) return Unusable(process, reply.status());
    if (reply->op() != Op::kPort) return reply->GetStatus();
    std::string port = reply->Str();
    return std::unique_ptr<Listener>(
        new HelperListener(std::move(process), std::move(*link), std::move(port)));
  }

  Result<std::unique_ptr<Channel>> Connect(const std::string& address, Clock::time_point deadline,
                                           const std::atomic<bool>* cancel) override {
    std::shared_ptr<Process> process = Current();
    Result<Link> link = process->Open();
    if (!link.ok()) return Unusable(process, link.status());
    Message connect(Op::kConnect);
    connect.Str(address).U64(static_cast<uint64_t>(Left(deadline).count()));
    Status sent = link->Send(connect);
    if (!sent.ok()) return Unusable(process, sent);
    Result<Message> reply = link->Receive(deadline + kAnswerTimeout, cancel);
    if (!reply.ok()) {
      link->Shutdown();
      if (reply.status().code() == StatusCode::kCancelled) {
        return Status(StatusCode::kCancelled, "MPI_Comm_connect was cancelled");
      }
      return Unusable(process, reply.status());
    }
    Status connected = reply->GetStatus();
    if (!connected.ok()) return connected;
    return std::unique_ptr<Channel>(new HelperChannel(std::move(process), std::move(*link)));
  }

 private:
  std::shared_ptr<Process> Current() const {
    std::lock_guard<std::mutex> lock(mu_);
    return current_;
  }

  // The helper failed a request: dead, or wedged (then killed); a server starts a new one.
  Status Unusable(const std::shared_ptr<Process>& process, const Status& why) {
    Status alive = process->Alive();
    if (alive.ok() && why.code() == StatusCode::kTimeout) {
      process->Kill();
      alive = process->Alive();
    }
    if (serving_ && !alive.ok()) Replace(process);
    return alive.ok() ? why : alive;
  }

  // Starts a new helper in the background to take over from `old` (a server's only). Const: a
  // health check that finds the helper gone starts its successor.
  void Replace(const std::shared_ptr<Process>& old) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!serving_ || stopping_ || replacing_ || current_ != old) return;
    if (Clock::now() - last_replace_ < std::chrono::seconds(1)) return;
    replacing_ = true;
    last_replace_ = Clock::now();
    if (replacer_.joinable()) replacer_.join();  // finished: replacing_ was false
    replacer_ = std::thread([this] {
      Result<std::shared_ptr<Process>> fresh = Process::Start(options_, options_.rendezvous_uri);
      std::lock_guard<std::mutex> swap(mu_);
      replacing_ = false;
      if (fresh.ok()) current_ = std::move(*fresh);
    });
  }

  const TransportOptions options_;
  const bool serving_;
  mutable std::mutex mu_;  // guards the fields below
  mutable std::shared_ptr<Process> current_;
  mutable bool replacing_ = false;
  bool stopping_ = false;
  mutable Clock::time_point last_replace_{};
  mutable std::thread replacer_;
};

class HelperDataPlane : public DataPlane {
 public:
  explicit HelperDataPlane(TransportOptions options) : options_(std::move(options)) {}
  std::string bound_rendezvous() const override { return ""; }
  bool one_rendezvous_per_process() const override { return false; }

  Result<std::shared_ptr<Transport>> Start(const std::string& peer_rendezvous) override {
    const std::string& spec = peer_rendezvous.empty() ? options_.rendezvous_uri : peer_rendezvous;
    Result<std::shared_ptr<Process>> process = Pool::Get().Take(options_, spec);
    if (!process.ok()) return process.status();
    return std::shared_ptr<Transport>(
        std::make_shared<HelperTransport>(options_, std::move(*process), false));
  }

  Result<std::shared_ptr<Transport>> StartServing() override {
    Result<std::shared_ptr<Process>> process = Process::Start(options_, options_.rendezvous_uri);
    if (!process.ok()) return process.status();
    return std::shared_ptr<Transport>(
        std::make_shared<HelperTransport>(options_, std::move(*process), true));
  }

 private:
  const TransportOptions options_;
};

}  // namespace

std::shared_ptr<DataPlane> MakeHelperDataPlane(const TransportOptions& options) {
  return std::make_shared<HelperDataPlane>(options);
}

Status PrestartHelper(const TransportOptions& options) {
  Result<std::shared_ptr<Process>> process = Pool::Get().Take(options, options.rendezvous_uri);
  if (!process.ok()) return process.status();
  Pool::Get().Give(std::move(*process));
  return Status::Ok();
}

}  // namespace netloader::transfer::helper
