#include "netloader/src/protocol/registration.h"

namespace netloader {

Registrar::Registrar(Fingerprint served, std::function<std::string()> rendezvous, int max_sessions)
    : served_(std::move(served)), rendezvous_(std::move(rendezvous)), max_sessions_(max_sessions) {}

Admission Registrar::Decide(const RegisterRequest& request,
                            const std::function<Status()>& transport_health) const {
  Admission admission;
  Fingerprint served = served_;
  if (request.selected_table_digest) served.table_digest = *request.selected_table_digest;
  admission.diffs =
      CompareFingerprints(served, request.fingerprint, request.selected_table_digest.has_value());
  if (!admission.diffs.empty()) {
    admission.kind = Admission::Kind::kReject;
    admission.code = StatusCode::kFingerprintMismatch;
    admission.reason = "fingerprint differs: " + DescribeDiffs(admission.diffs);
    return admission;
  }
  if (!request.rendezvous_uri.empty() && request.rendezvous_uri != rendezvous_()) {
    admission.kind = Admission::Kind::kReject;
    admission.code = StatusCode::kUnavailable;
    admission.diffs.push_back({"rendezvous_uri", rendezvous_(), request.rendezvous_uri});
    admission.reason =
        "the client's MPI is bound to another rendezvous: " + DescribeDiffs(admission.diffs);
    return admission;
  }
  if (Status health = transport_health(); !health.ok()) {
    admission.kind = Admission::Kind::kReject;
    admission.code = StatusCode::kUnavailable;
    admission.reason = "server transport unavailable: " + health.message();
    return admission;
  }
  if (active() >= max_sessions_) {
    admission.kind = Admission::Kind::kBusy;
    admission.reason = std::to_string(active()) + " of " + std::to_string(max_sessions_) +
                       " transfer slots in use";
    return admission;
  }
  admission.kind = Admission::Kind::kAccept;
  return admission;
}

uint64_t Registrar::Open() {
  uint64_t id;
  do {
    id = ids_();
  } while (id == 0 || sessions_.count(id));
  sessions_.insert(id);
  return id;
}

void Registrar::Close(uint64_t session) { sessions_.erase(session); }

}  // namespace netloader
