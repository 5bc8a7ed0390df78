#include "client/heartbeats.h"

#include <algorithm>

#include "client/cancel.h"
#include "netloader/src/base/clock.h"

namespace netloader::internal {

Heartbeats::Heartbeats(ControlChannel& control, uint64_t session, const ClientOptions& options)
    : control_(control), session_(session), options_(options) {
  thread_ = std::thread([this] { Loop(); });
}

Heartbeats::~Heartbeats() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Status Heartbeats::why() const {
  if (cancelled_) return CancelledStatus();
  std::lock_guard<std::mutex> lock(mu_);
  return Status(StatusCode::kUnavailable, reason_);
}

void Heartbeats::Send(wire::Envelope message) {
  std::lock_guard<std::mutex> lock(mu_);
  outbox_.push_back(std::move(message));
  wake_.notify_all();
}

void Heartbeats::Loop() {
  auto last_answer = Clock::now();
  auto next_beat = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (IsCancelled(options_.cancel)) {
      cancelled_ = true;
      lost_ = true;
      return;
    }
    std::vector<wire::Envelope> out;
    out.swap(outbox_);
    lock.unlock();
    for (wire::Envelope& message : out) (void)control_.Send(message);
    if (Clock::now() >= next_beat) {
      wire::Envelope beat;
      beat.mutable_heartbeat()->set_session_id(session_);
      (void)control_.Send(beat);  // a source that is gone shows as silence
      next_beat = Clock::now() + options_.heartbeat_interval;
    }
    // The answers that came meanwhile (looking only: nothing here waits).
    for (Result<wire::Envelope> reply = control_.Receive(std::chrono::milliseconds(0));;
         reply = control_.Receive(std::chrono::milliseconds(0))) {
      if (!reply.ok()) {
        if (reply.status().code() == StatusCode::kTimeout) break;  // nothing more waiting
        return Lose(reply.status().message());
      }
      if (reply->has_heartbeat()) last_answer = Clock::now();
      if (reply->has_reject()) {
        return Lose("the source dropped the session: " + reply->reject().reason());
      }
    }
    const auto silent =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_answer);
    if (options_.heartbeat_timeout.count() > 0 && silent > options_.heartbeat_timeout) {
      return Lose("the source answered no heartbeat for " + std::to_string(silent.count()) +
                  " ms (it died or froze)");
    }
    lock.lock();
    // Wake for the next beat, a queued message, the moment the source's silence would exceed
    // the timeout, and every 50 ms to look at the connection (a source whose process exited
    // is known within a reconnect interval, without waiting for the heartbeat deadline) and
    // at ClientOptions::cancel.
    auto wake = std::min(next_beat, Clock::now() + kCancelCheck);
    if (options_.heartbeat_timeout.count() > 0) {
      wake =
          std::min(wake, last_answer + options_.heartbeat_timeout + std::chrono::milliseconds(1));
    }
    wake_.wait_until(lock, wake, [this] { return stop_ || !outbox_.empty(); });
  }
}

void Heartbeats::Lose(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  reason_ = why;
  lost_ = true;
}

}  // namespace netloader::internal
