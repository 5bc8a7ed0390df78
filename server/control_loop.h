#pragma once

// The server's control thread: the one owner of the ZeroMQ socket and of the sessions.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "netloader/server.h"
#include "netloader/src/protocol/wire.h"
#include "netloader/tensor.h"
#include "server/admission.h"
#include "server/control_socket.h"
#include "server/relay_state.h"
#include "server/ring_pool.h"
#include "server/session.h"
#include "server/stats.h"
#include "transfer/transport.h"

namespace netloader::serving {

// Answers every message a client sends (Register, Heartbeat, Request, Done, StatusRequest):
// decodes it, asks the AdmissionPolicy about each Register, opens a Session for each client it
// admits and starts its thread, hands Requests and Done to the sessions, drops those whose client
// went silent, and retires (joins and counts) those that finished, within about 100 ms.
// Threads: Start once, from the thread that makes the server; Stop from any thread (idempotent).
// Everything else runs on the control thread that Start starts, which alone touches the socket,
// the policy and the sessions. The references given must outlive Stop.
class ControlLoop {
 public:
  ControlLoop(const ServerOptions& options, const ModelView& model, transfer::Transport& transport,
              std::unique_ptr<ControlSocket> socket, RelayState& content, RingPool& rings,
              StatsCounter& stats);
  ~ControlLoop() { Stop(); }
  ControlLoop(const ControlLoop&) = delete;
  ControlLoop& operator=(const ControlLoop&) = delete;

  const std::string& endpoint() const { return socket_->endpoint(); }

  void Start();
  // Stops the control thread, which first aborts every session, joins their threads and counts
  // them, then closes the socket; returns once it has (Server::Stop's bound).
  void Stop();

 private:
  using Sessions = std::map<uint64_t, std::unique_ptr<Session>>;

  void Run();
  // Reads and handles one message; false when none is waiting.
  bool ReceiveOne();
  void HandleRegister(const std::string& identity, const wire::Register& request);
  // Opens the session of an accepted client (`selected`/`selection`: a partial load's tensors).
  void Admit(const std::string& identity, const std::string& client, const wire::Register& request,
             const std::vector<size_t>& selected, ModelView selection,
             const RelayState::Snapshot& content);
  void SendBusy(const std::string& identity, const std::string& client, const std::string& reason,
                std::chrono::milliseconds retry);
  void HandleHeartbeat(const std::string& identity, const wire::Heartbeat& beat);
  void HandleRequest(const std::string& identity, const wire::Request& request);
  void HandleDone(const wire::Done& done);
  void HandleStatus(const std::string& identity);

  // The session a Heartbeat or Request names, which the client is heard from; nullptr, after a
  // Reject to the sender, when it is not active.
  Session* ActiveSession(const std::string& identity, uint64_t id);
  // The endpoints where the clients streaming from here serve while they load (its children in
  // the tree): what StatusRequest reports and redirects choose from.
  std::vector<std::string> Children() const;
  // A client that stopped sending heartbeats died or froze: abort its transfer, free its slot.
  void DropSilentSessions();
  void ReapFinishedSessions();
  // Joins a session's thread, frees its slot and counts its outcome, all in one update of the
  // stats, so that nobody sees a session counted as done and still open.
  Sessions::iterator Retire(Sessions::iterator it);
  // ServerStats::active_transfers is the policy's count of open sessions.
  void CountSessions();

  const ServerOptions& options_;
  const ModelView& model_;
  transfer::Transport& transport_;
  RelayState& content_;
  RingPool& rings_;
  StatsCounter& stats_;

  // Owned by the control thread once it runs.
  std::unique_ptr<ControlSocket> socket_;
  AdmissionPolicy policy_;
  Sessions sessions_;

  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;  // guards joining thread_ (Stop may be called from several threads)
  std::thread thread_;
};

}  // namespace netloader::serving
