#include "server/session.h"

#include <algorithm>
#include <cstdio>
#include <functional>

#include "netloader/src/base/log.h"

namespace netloader::serving {

std::string HexId(uint64_t id) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(id));
  return text;
}

Session::Session(uint64_t id, std::string client, std::shared_ptr<const Stream> stream,
                 uint64_t generation, std::string serve_endpoint,
                 std::unique_ptr<transfer::Listener> listener)
    : id_(id),
      client_(std::move(client)),
      stream_(std::move(stream)),
      generation_(generation),
      serve_endpoint_(std::move(serve_endpoint)),
      listener_(std::move(listener)) {}

void Session::Start(const ServerOptions& options, RingPool& rings, RelayState* relay) {
  thread_ = std::thread([this, &options, &rings, relay] { Serve(options, rings, relay); });
}

void Session::Post(std::vector<size_t> chunks) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.push_back(std::move(chunks));
  cv_.notify_all();
}

void Session::Conclude(const wire::Done& done) {
  std::lock_guard<std::mutex> lock(mu_);
  done_ = done;
  if (!done.verified()) abort_ = true;
  cv_.notify_all();
}

void Session::GiveUp(std::string why) {
  std::lock_guard<std::mutex> lock(mu_);
  lost_ = std::move(why);
  abort_ = true;
  cv_.notify_all();
}

void Session::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  abort_ = true;
  cv_.notify_all();
}

// The session thread: accept the client's MPI connection, stream, await its verdict.
void Session::Serve(const ServerOptions& options, RingPool& rings, RelayState* relay) {
  const std::string who = client_ + " (session " + HexId(id_) + ")";
  Result<std::unique_ptr<transfer::Channel>> channel =
      listener_->Accept(Clock::now() + options.connect_timeout, &abort_);
  if (!channel.ok()) {
    Log().warn("client {} did not connect over MPI: {}", who, DescribeAbort(channel.status()));
    Finish(false, 0);
    return;
  }
  const auto start = Clock::now();
  const SendPlan& plan = stream_->plan;
  std::unique_ptr<StagingRing> ring;  // for chunks of several spans, if the stream has any
  if (plan.slot_bytes() > 0) {
    // No more slots than chunks can be in flight.
    Result<std::unique_ptr<StagingRing>> taken =
        rings.Take(std::min(static_cast<size_t>(options.window), plan.size()), plan.slot_bytes());
    if (!taken.ok()) {
      Log().error("client {}: {}", who, taken.status().ToString());
      (*channel)->Abandon();
      Finish(false, 0);
      return;
    }
    ring = std::move(*taken);
  }
  Streamed streamed = StreamRequests(**channel, options, ring.get(), relay);
  const double seconds = SecondsSince(start);
  if (ring) rings.Return(std::move(ring));
  Report(who, *channel, std::move(streamed), seconds, options);
}

// A client may wait between Requests as long as it is heard from: a striped client that has
// nothing left to claim waits for its other sources, and only its Done follows. So the wait
// ends `done_timeout` after the later of its start and the client's last heartbeat; a client
// that fell silent is given up on that long after its last word.
void Session::WaitForRequestOrDone(std::unique_lock<std::mutex>& lock,
                                   std::chrono::milliseconds done_timeout) {
  const auto ready = [&] { return !requests_.empty() || done_.has_value() || abort_.load(); };
  const auto since = Clock::now();
  while (true) {
    const auto heard = Clock::time_point(std::chrono::milliseconds(last_heard_ms_.load()));
    const auto deadline = std::max(since, heard) + done_timeout;
    if (cv_.wait_until(lock, deadline, ready)) return;
    const auto heard_now = Clock::time_point(std::chrono::milliseconds(last_heard_ms_.load()));
    if (Clock::now() >= std::max(since, heard_now) + done_timeout) return;
  }
}

// Streams each Request's chunks as it comes, until the client's Done (or its silence).
Session::Streamed Session::StreamRequests(transfer::Channel& channel, const ServerOptions& options,
                                          StagingRing* ring, RelayState* relay) {
  const SendPlan& plan = stream_->plan;
  transfer::StreamOptions stream;
  stream.window = options.window;
  stream.stall_timeout = options.stall_timeout;
  stream.cancel = &abort_;
  Streamed out;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    WaitForRequestOrDone(lock, options.done_timeout);
    if (requests_.empty() || abort_.load()) break;
    const std::vector<size_t> chunks = std::move(requests_.front());
    requests_.pop_front();
    lock.unlock();
    ++out.requests;
    out.status = plan.Send(
        channel, stream, ring, chunks, [&](size_t c) { out.sent += plan.bytes(c); },
        relay ? [&](size_t c) { return relay->WaitHeld(generation_, plan.range(c), c, abort_); }
              : std::function<Status(size_t)>());
    lock.lock();
    if (!out.status.ok()) break;
  }
  out.done = done_;
  out.aborted = abort_.load();
  return out;
}

// Logs how the transfer ended, leaves the connection (collectively only after a verified Done)
// and finishes.
void Session::Report(const std::string& who, std::unique_ptr<transfer::Channel>& channel,
                     Streamed streamed, double seconds, const ServerOptions& options) {
  const uint64_t sent = streamed.sent;
  Status status = std::move(streamed.status);
  const std::optional<wire::Done>& done = streamed.done;
  if (!status.ok() || (streamed.aborted && !done)) {
    if (status.ok()) status = Status(StatusCode::kCancelled, "the session was aborted");
    Log().warn("transfer to {} failed after {} of {} bytes: {}", who, sent,
               stream_->view.total_bytes(), DescribeAbort(status));
    channel->Abandon();
    Finish(false, sent);
    return;
  }
  if (done && done->verified()) {
    // A striped client takes part of the stream from each source; say which part this was.
    const uint64_t stream_bytes = stream_->view.total_bytes();
    Log().info("served {}: {} bytes{} in {:.3f} s ({:.2f} GB/s), verified by client", who, sent,
               sent == stream_bytes
                   ? fmt::format(", {} tensors", stream_->view.tensors.size())
                   : fmt::format(" of the {}-byte stream (the client loaded the rest elsewhere)",
                                 stream_bytes),
               seconds, seconds > 0 ? sent / seconds / 1e9 : 0.0);
    Finish(true, sent);
    channel.reset();  // collective disconnect: the client does the same after Done
    return;
  }
  if (done) {
    Log().warn("client {} rejected the transfer at chunk {}: {}", who, done->failed_chunk(),
               done->message());
  } else {
    Log().warn("client {} sent no {} and was not heard from for {} ms {}", who,
               streamed.requests ? "Done" : "Request", options.done_timeout.count(),
               streamed.requests ? "after the last chunk it asked for" : "after it connected");
  }
  channel->Abandon();
  Finish(false, sent);
}

std::string Session::DescribeAbort(const Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (status.code() == StatusCode::kCancelled && done_) {
    return done_->message().empty() ? "the client gave up (it gave no reason)"
                                    : "the client gave up: " + done_->message();
  }
  if (status.code() == StatusCode::kCancelled && !lost_.empty()) return lost_;
  return status.ToString();
}

void Session::Finish(bool served, uint64_t bytes) {
  served_ = served;
  bytes_sent_ = bytes;
  finished_ = true;
}

}  // namespace netloader::serving
