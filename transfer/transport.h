#pragma once

// The bulk data plane's interface. Implementations: MPI in helper processes (transfer/helper/),
// MPI inside this process (transfer/mpi/, which the helpers run), and in-process memory for tests,
// with fault injection (tests/support/inproc_transport.h). Knows nothing of ZeroMQ or protobuf.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "netloader/status.h"
#include "transfer/chunk_list.h"

namespace netloader::transfer {

using Clock = std::chrono::steady_clock;

struct StreamOptions {
  int window = 4;  // messages in flight
  // Fail with Timeout when no message completes for this long.
  std::chrono::milliseconds stall_timeout{30000};
  // Checked while waiting; when it becomes true the stream stops with Cancelled.
  const std::atomic<bool>* cancel = nullptr;
  // Called just before chunk i is posted (sent or received into). Chunk i + window is posted only
  // after chunk i completed and its completion callback returned, so memory shared by chunks i
  // and i + window (a staging ring of `window` slots) is never in use twice. It may wait (a
  // relay waiting for the chunk to arrive); a non-OK status stops the stream with that status.
  // The stall deadline counts from its return.
  std::function<Status(size_t index)> prepare;
};

// Called after chunk `index` has completed (sent, or received in full). A non-OK status aborts the
// stream with that status. Runs on the streaming thread while later chunks are still in flight.
using ChunkCallback = std::function<Status(size_t index)>;

// One connected peer. Used by one thread at a time. The destructor disconnects, bounded in time.
class Channel {
 public:
  virtual ~Channel() = default;
  // Sends every chunk in order, `window` at a time, straight from the chunks' memory.
  virtual Status Send(const ChunkList& chunks, const StreamOptions& options,
                      const ChunkCallback& on_sent) = 0;
  // Receives every chunk in order straight into the chunks' memory. A message whose size differs
  // from the chunk's fails the stream with TransferFailed.
  virtual Status Receive(const ChunkList& chunks, const StreamOptions& options,
                         const ChunkCallback& on_received) = 0;
  // Declares the peer unreliable (it reported a failure or went silent): the destructor then
  // leaves the connection without a collective disconnect (MPI: and without freeing the
  // communicator, whose context id must not be reused while cancelled receives may linger).
  virtual void Abandon() = 0;
};

// A port waiting for exactly one peer.
class Listener {
 public:
  virtual ~Listener() = default;
  // What the peer passes to Transport::Connect.
  virtual const std::string& address() const = 0;
  // The rendezvous the peer must use to reach address() (the MPI rendezvous URI).
  virtual std::string rendezvous() const = 0;
  // Waits for the peer until `deadline` (Timeout) or until `cancel` becomes true (Cancelled).
  // May be called once.
  virtual Result<std::unique_ptr<Channel>> Accept(Clock::time_point deadline,
                                                  const std::atomic<bool>* cancel = nullptr) = 0;
};

// Thread-safe: Listen and Connect may be called from several threads at once.
class Transport {
 public:
  virtual ~Transport() = default;
  // What a peer needs besides a port address to reach this process (the MPI rendezvous URI).
  virtual std::string rendezvous() const = 0;
  // OK while the transport can serve; Unavailable with the reason once it cannot.
  virtual Status health() const = 0;
  virtual Result<std::unique_ptr<Listener>> Listen() = 0;
  // Connects to the peer listening at `address`, until `deadline` (Timeout) or until `cancel`
  // becomes true (Cancelled).
  virtual Result<std::unique_ptr<Channel>> Connect(const std::string& address,
                                                   Clock::time_point deadline,
                                                   const std::atomic<bool>* cancel = nullptr) = 0;
};

// A process's data plane: the runtime its transports run on (MPI) and the rendezvous through which
// its peers reach it, which all of them must share. The server and the client reach the data
// plane only through this, so that tests and other transports plug in at one place.
// Thread-safe.
class DataPlane {
 public:
  virtual ~DataPlane() = default;
  // The rendezvous this process is bound to; empty while the runtime has not started (a client
  // then adopts the one its source names).
  virtual std::string bound_rendezvous() const = 0;
  // Whether all of this process's peers must share one rendezvous (MPI inside this process);
  // false when each source and server gets a runtime of its own (MPI in helper processes).
  virtual bool one_rendezvous_per_process() const { return true; }
  // Starts the runtime if it has not started, bound to `peer_rendezvous` when that is not empty
  // (the one a source named), and returns a transport over it, for connecting to that source.
  virtual Result<std::shared_ptr<Transport>> Start(const std::string& peer_rendezvous) = 0;
  // A transport for a server to listen on.
  virtual Result<std::shared_ptr<Transport>> StartServing() { return Start(""); }
};

}  // namespace netloader::transfer
