#pragma once

// Whom the server admits, and where it sends those it does not: the answer to each Register.
// Plain code: no sockets, no MPI, no clock. The control thread feeds it what it needs and acts
// on the answers (PROTOCOL.md, section 4.2).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "netloader/fingerprint.h"
#include "netloader/src/protocol/registration.h"
#include "netloader/status.h"

namespace netloader::serving {

// A Register, decoded.
struct Registration {
  // The fingerprint, the client's rendezvous, and for a partial load the digest of the table its
  // patterns select here.
  RegisterRequest request;
  std::string serve_endpoint;  // where the client serves while it loads; empty if it does not
  uint32_t redirects = 0;      // how often the client was redirected on its way here
};

// What the server holds when a client registers.
struct Holding {
  bool stream_known = false;  // the whole model's stream is known (a relay: heard from its source)
  bool complete = false;      // every byte held and verified
  std::string failure;        // why a relay's own load failed; empty when it did not
};

// What the policy asks of the server, each only when its answer matters, in this order.
struct Probes {
  std::function<Status()> transport_health;  // asked once the fingerprint and rendezvous match
  std::function<Holding()> holding;          // asked once the Registrar did not refuse
  std::function<std::vector<std::string>()> children;  // asked at the fan-out limit
};

// The answer to one Register.
struct Decision {
  enum class Kind { kReject, kBusy, kRedirect, kAccept };
  Kind kind = Kind::kReject;
  StatusCode code = StatusCode::kOk;         // kReject
  std::string reason;                        // kReject, kBusy: what the client is told
  std::string log;                           // kReject: what the server logs
  std::vector<FieldDiff> diffs;              // kReject: every differing field of the fingerprint
  bool send_table = false;                   // kReject: the tables differ; send the served one
  std::chrono::milliseconds retry_after{0};  // kBusy
  std::vector<std::string> relays;           // kRedirect: the children to try, in order
};

// Decides on Register requests, in this order: the fingerprint, rendezvous, transport health
// and capacity (Registrar); then what the server holds (a relay whose own load failed refuses;
// one that has not heard from its source, or serves a partial load before it is complete, says
// Busy); then the fan-out limit, at which a whole-model load is redirected to the clients
// loading from here that serve meanwhile (its children), the child sent the fewest newcomers
// first; then the Registrar's Busy at capacity. It also tracks the admitted sessions (Open,
// Close) and how many newcomers each child was sent.
// Not thread-safe: one owner (the control thread).
class AdmissionPolicy {
 public:
  // A relay that has not heard from its source yet learns its stream from the source's Accept,
  // moments after it started loading: its clients retry within this, not the full hint.
  static constexpr std::chrono::milliseconds kWaitingRetryCap{100};

  // `fanout`: ServerOptions::fanout (0: never redirect); `busy_retry_hint`: the retry hint of a
  // Busy (ServerOptions::busy_retry_hint).
  AdmissionPolicy(Registrar registrar, int fanout, std::chrono::milliseconds busy_retry_hint);

  // A Redirect counts the first relay it names as sent one more newcomer.
  Decision Decide(const Registration& registration, const Probes& probes);

  // Admits a session after an Accept decision; returns its unpredictable id.
  uint64_t Open() { return registrar_.Open(); }
  // Frees a session's slot and forgets the newcomers sent to `child`, its serve endpoint
  // (empty: none).
  void Close(uint64_t session, const std::string& child);
  int active() const { return registrar_.active(); }
  int limit() const { return registrar_.limit(); }

 private:
  // The children other than `newcomer`, the one sent the fewest newcomers first (ties in the
  // order given); that one is counted as sent this newcomer.
  std::vector<std::string> RelaysFor(const std::vector<std::string>& children,
                                     const std::string& newcomer);

  Registrar registrar_;
  const int fanout_;
  const std::chrono::milliseconds busy_retry_hint_;
  std::map<std::string, uint64_t> redirected_;  // a child's endpoint -> newcomers sent there
};

}  // namespace netloader::serving
