#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

namespace netloader::transfer {

// MPI progress for every stream of the process, driven by the threads that wait: a stream posts
// its nonblocking operations, then waits for the oldest. The first waiting thread becomes the
// driver: it tests every pending operation of the process (MPI_Testsome), marks the completed
// ones and wakes their owners, until its own is done; then another waiting thread takes over.
// Every other waiter sleeps on a condition variable. So a lone stream (one client, or a server
// with one client) is one thread in MPI, as a bare MPI_Wait would be, with no hand-off between
// threads per chunk; several streams still have one poller (each MPI_Test runs UCX's progress
// for all connections under one lock: with one polling thread per client, a 4-client server
// spent 23% of its time in pthread_spin_lock); and when nobody waits nobody polls.
// The driver spins while operations complete; once none has completed for kStallAfter (a stalled
// or frozen peer), it sleeps briefly between polls. Thread-safe.
class ProgressEngine {
 public:
  struct Op {
    MPI_Request request = MPI_REQUEST_NULL;
    bool done = false;
    bool cancel = false;       // the owner gave up: the driver cancels it
    bool keep = false;         // ... but leaves it pending until MPI completes it (Withdraw)
    bool cancel_sent = false;  // MPI_Cancel was called
    int error = MPI_SUCCESS;
    MPI_Count bytes = 0;  // elements (bytes) received
  };
  enum class Wait { kDone, kTimeout, kCancelled };

  // The process's engine; it lives until the process exits.
  static ProgressEngine& Get();

  // Registers a posted operation.
  std::shared_ptr<Op> Add(MPI_Request request);
  // Waits for `op` until `give_up`, or until `cancel` becomes true, driving progress meanwhile
  // when no other thread does.
  Wait WaitFor(const Op& op, std::chrono::steady_clock::time_point give_up,
               const std::atomic<bool>* cancel);
  // Gives up on `op`: it is cancelled and freed (at once when nobody drives, else by the driver).
  // MPI may still complete a freed operation later (a receive that had matched a message goes
  // on writing into its buffer), so this is for sends, or for receives Withdraw could not settle.
  void Cancel(const std::shared_ptr<Op>& op);
  // Cancels `op` but keeps it pending until MPI completes it, cancelled or delivered: once
  // WaitFor(op) then returns kDone, MPI no longer touches its buffer.
  void Withdraw(const std::shared_ptr<Op>& op);

 private:
  ProgressEngine() = default;
  // One MPI_Testsome over every pending operation, with mu_ released around it. Returns how many
  // completed. Only the driver calls it.
  int Poll(std::unique_lock<std::mutex>& lock);
  // Cancel (keep false) and Withdraw (keep true).
  void GiveUp(const std::shared_ptr<Op>& op, bool keep);
  // Cancels the operations whose owners gave up, and frees those not withdrawn. With mu_ held,
  // and no poll running.
  void DropCancelled();

  std::mutex mu_;                 // guards driving_, pending_ and every Op's fields
  std::condition_variable done_;  // some operation completed, or the driver stepped down
  bool driving_ = false;          // a thread is driving progress
  std::vector<std::shared_ptr<Op>> pending_;
  // The driver's scratch space, reused across polls.
  std::vector<std::shared_ptr<Op>> polled_;
  std::vector<MPI_Request> requests_;
  std::vector<int> indices_;
  std::vector<MPI_Status> statuses_;
};

}  // namespace netloader::transfer
