#include "transfer/mpi/progress.h"

#include <sched.h>

#include <algorithm>
#include <thread>

namespace netloader::transfer {
namespace {

using Clock = std::chrono::steady_clock;

// No completion for this long: the peer stalled or froze (data flowing at any useful rate
// completes a 4 MiB chunk far sooner). The driver then sleeps kStalledPoll between polls instead
// of spinning, until something completes again or its deadline passes.
constexpr std::chrono::milliseconds kStallAfter{10};
constexpr std::chrono::microseconds kStalledPoll{50};
// While spinning, the driver yields the core every this many empty polls: free when nothing
// else wants to run, and the host's own threads (an engine decoding while it serves) get a
// turn.
constexpr int kYieldEvery = 32;
// Waiters that do not drive look at their cancel flag and deadline this often.
constexpr std::chrono::milliseconds kWaiterCheck{20};

}  // namespace

ProgressEngine& ProgressEngine::Get() {
  static ProgressEngine* engine = new ProgressEngine();  // outlives detached threads at exit
  return *engine;
}

std::shared_ptr<ProgressEngine::Op> ProgressEngine::Add(MPI_Request request) {
  auto op = std::make_shared<Op>();
  op->request = request;
  std::lock_guard<std::mutex> lock(mu_);
  pending_.push_back(op);
  return op;
}

void ProgressEngine::Cancel(const std::shared_ptr<Op>& op) { GiveUp(op, /*keep=*/false); }

void ProgressEngine::Withdraw(const std::shared_ptr<Op>& op) { GiveUp(op, /*keep=*/true); }

void ProgressEngine::GiveUp(const std::shared_ptr<Op>& op, bool keep) {
  std::lock_guard<std::mutex> lock(mu_);
  if (op->done) return;
  op->cancel = true;
  op->keep = keep;
  // Nobody is inside MPI_Testsome with it: cancel it now rather than when a driver next polls.
  if (!driving_) DropCancelled();
}

void ProgressEngine::DropCancelled() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    Op& op = **it;
    if (!op.cancel) {
      ++it;
      continue;
    }
    if (!op.cancel_sent) {
      MPI_Cancel(&op.request);
      op.cancel_sent = true;
    }
    if (op.keep) {  // MPI_Testsome completes it
      ++it;
      continue;
    }
    MPI_Request_free(&op.request);
    op.done = true;
    op.error = MPI_ERR_REQUEST;
    it = pending_.erase(it);
  }
}

int ProgressEngine::Poll(std::unique_lock<std::mutex>& lock) {
  DropCancelled();
  polled_ = pending_;
  const int n = static_cast<int>(polled_.size());
  requests_.resize(polled_.size());
  indices_.resize(polled_.size());
  statuses_.resize(polled_.size());
  for (int i = 0; i < n; ++i) requests_[i] = polled_[i]->request;
  lock.unlock();  // owners may post and cancel meanwhile; only the driver tests
  int count = 0;
  const int rc = n > 0
                     ? MPI_Testsome(n, requests_.data(), &count, indices_.data(), statuses_.data())
                     : MPI_SUCCESS;
  lock.lock();
  if (count == MPI_UNDEFINED) count = 0;
  for (int k = 0; k < count; ++k) {
    Op& op = *polled_[indices_[k]];
    op.request = MPI_REQUEST_NULL;
    op.error = rc == MPI_ERR_IN_STATUS ? statuses_[k].MPI_ERROR : MPI_SUCCESS;
    int cancelled = 0;
    if (op.cancel_sent) MPI_Test_cancelled(&statuses_[k], &cancelled);
    if (cancelled) op.error = MPI_ERR_REQUEST;
    MPI_Get_elements_x(&statuses_[k], MPI_BYTE, &op.bytes);
    op.done = true;
  }
  if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
    // A failure not tied to one request: fail them all rather than spin on it.
    for (auto& op : polled_) {
      if (!op->done) {
        op->cancel = true;
        op->keep = false;
      }
    }
  }
  if (count > 0) {
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                  [](const std::shared_ptr<Op>& o) { return o->done; }),
                   pending_.end());
    done_.notify_all();
  }
  polled_.clear();
  return count;
}

ProgressEngine::Wait ProgressEngine::WaitFor(const Op& op, Clock::time_point give_up,
                                             const std::atomic<bool>* cancel) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!op.done) {
    if (cancel && cancel->load()) return Wait::kCancelled;
    if (Clock::now() >= give_up) return Wait::kTimeout;
    if (driving_) {
      done_.wait_until(lock, std::min(give_up, Clock::now() + kWaiterCheck));
      continue;
    }
    // Drive until this thread's operation is done, then hand the role on.
    driving_ = true;
    Wait result = Wait::kDone;
    auto last_completion = Clock::now();
    for (int empty = 0; !op.done;) {
      if (Poll(lock) > 0) {
        last_completion = Clock::now();
        empty = 0;
        continue;
      }
      const auto now = Clock::now();
      if ((cancel && cancel->load()) || now >= give_up) {
        result = cancel && cancel->load() ? Wait::kCancelled : Wait::kTimeout;
        break;
      }
      const bool stalled = now - last_completion > kStallAfter;
      if (!stalled && ++empty % kYieldEvery != 0) continue;
      lock.unlock();
      if (stalled) {
        std::this_thread::sleep_for(kStalledPoll);
      } else {
        sched_yield();
      }
      lock.lock();
    }
    driving_ = false;
    done_.notify_all();  // another waiter takes over
    return result;
  }
  return Wait::kDone;
}

}  // namespace netloader::transfer
