#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "netloader/status.h"

namespace netloader::transfer {

// Runs `call` on a helper thread and waits for it until `deadline`. Some blocking calls (MPI
// connect/accept/disconnect, getaddrinfo) have no timeout of their own and may never return when
// the peer is gone; this bounds how long the caller waits. On timeout the helper thread is left
// running, detached; if the call completes later its result is handed to `discard` (for example to
// free a communicator nobody will use). Returns Timeout naming `what` when the deadline passes, and
// Cancelled when `cancel` becomes true first (checked every 20 ms).
template <typename T>
Result<T> CallWithDeadline(const std::string& what, std::chrono::steady_clock::time_point deadline,
                           std::function<Result<T>()> call,
                           std::function<void(T&)> discard = nullptr,
                           const std::atomic<bool>* cancel = nullptr) {
  struct State {
    std::mutex mu;  // guards everything below
    std::condition_variable cv;
    std::optional<Result<T>> result;
    bool abandoned = false;
  };
  auto state = std::make_shared<State>();
  std::thread worker([state, call = std::move(call), discard = std::move(discard)]() mutable {
    Result<T> result = call();
    std::unique_lock<std::mutex> lock(state->mu);
    if (state->abandoned) {
      lock.unlock();
      if (result.ok() && discard) discard(result.value());
      return;
    }
    state->result.emplace(std::move(result));
    state->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(state->mu);
  while (!state->result.has_value()) {
    const auto now = std::chrono::steady_clock::now();
    const bool cancelled = cancel && cancel->load();
    if (now >= deadline || cancelled) {
      state->abandoned = true;
      lock.unlock();
      worker.detach();
      return cancelled
                 ? Status(StatusCode::kCancelled, what + " was cancelled")
                 : Status(StatusCode::kTimeout, what + " did not complete before its deadline");
    }
    state->cv.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(20)));
  }
  lock.unlock();
  worker.join();
  return std::move(*state->result);
}

}  // namespace netloader::transfer
