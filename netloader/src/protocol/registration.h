#pragma once

// The server's registration decisions as plain code: no sockets, no MPI, no clock. The server's
// control thread feeds it requests and acts on the answers.

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "netloader/fingerprint.h"

namespace netloader {

struct RegisterRequest {
  Fingerprint fingerprint;
  std::string rendezvous_uri;  // the client's, or empty if it will adopt the server's
  // A partial load (Register.tensors): the digest of the table its patterns select on this
  // server, which the client's table_digest must equal; the pipeline split is then not compared.
  std::optional<std::string> selected_table_digest;
};

struct Admission {
  enum class Kind { kAccept, kReject, kBusy };
  Kind kind = Kind::kReject;
  StatusCode code = StatusCode::kOk;  // for kReject
  std::string reason;                 // for kReject and kBusy
  std::vector<FieldDiff> diffs;       // every differing field, for kReject
};

// Decides on Register requests and tracks admitted sessions. Not thread-safe: one owner.
class Registrar {
 public:
  // `rendezvous` tells the server's current rendezvous (it changes when a new MPI helper takes
  // over with a private one).
  Registrar(Fingerprint served, std::function<std::string()> rendezvous, int max_sessions);

  // Checks in order: fingerprint (every field), rendezvous, transport health, capacity.
  // `transport_health` is asked only when the first two pass (it may probe the network).
  Admission Decide(const RegisterRequest& request,
                   const std::function<Status()>& transport_health) const;

  // Admits a session after an Accept decision; returns its unpredictable id.
  uint64_t Open();
  // Frees a session's slot; unknown ids are ignored.
  void Close(uint64_t session);
  bool IsOpen(uint64_t session) const { return sessions_.count(session) > 0; }
  int active() const { return static_cast<int>(sessions_.size()); }
  int limit() const { return max_sessions_; }

 private:
  Fingerprint served_;
  std::function<std::string()> rendezvous_;
  int max_sessions_;
  std::set<uint64_t> sessions_;
  std::mt19937_64 ids_{std::random_device{}()};
};

}  // namespace netloader
