#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

namespace netloader::transfer {

// One thread per process drives MPI progress for every stream. Each MPI_Test runs UCX's
// progress for all connections under one lock, so several streaming threads each polling their
// own requests only fought over that lock (measured: 23% of a 4-client server in
// pthread_spin_lock). Here streams post their operations and sleep on a condition variable; the
// progress thread tests every outstanding request with MPI_Testsome and wakes their owners.
class ProgressEngine {
 public:
  struct Op {
    MPI_Request request = MPI_REQUEST_NULL;
    bool done = false;
    bool cancel = false;  // the owner gave up: cancel and free it
    int error = MPI_SUCCESS;
    MPI_Count bytes = 0;  // elements (bytes) received
  };
  enum class Wait { kDone, kTimeout, kCancelled };

  // The process's engine, started on first use; it lives until the process exits.
  static ProgressEngine& Get();

  // Registers a posted operation.
  std::shared_ptr<Op> Add(MPI_Request request);
  // Waits for `op` until `give_up`, or until `cancel` becomes true (checked every 20 ms).
  Wait WaitFor(const Op& op, std::chrono::steady_clock::time_point give_up,
               const std::atomic<bool>* cancel);
  // Gives up on `op`: the engine cancels and frees it.
  void Cancel(const std::shared_ptr<Op>& op);

 private:
  ProgressEngine();
  void Loop();

  std::mutex mu_;                 // guards pending_ and every Op's fields
  std::condition_variable work_;  // pending_ became non-empty
  std::condition_variable done_;  // some operation completed
  std::vector<std::shared_ptr<Op>> pending_;
};

}  // namespace netloader::transfer
