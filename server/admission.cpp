#include "server/admission.h"

#include <algorithm>
#include <utility>

#include "netloader/limits.h"

namespace netloader::serving {
namespace {

Decision Reject(StatusCode code, std::string reason, std::string log) {
  Decision decision;
  decision.kind = Decision::Kind::kReject;
  decision.code = code;
  decision.reason = std::move(reason);
  decision.log = std::move(log);
  return decision;
}

Decision Busy(std::string reason, std::chrono::milliseconds retry_after) {
  Decision decision;
  decision.kind = Decision::Kind::kBusy;
  decision.reason = std::move(reason);
  decision.retry_after = retry_after;
  return decision;
}

}  // namespace

AdmissionPolicy::AdmissionPolicy(Registrar registrar, int fanout,
                                 std::chrono::milliseconds busy_retry_hint)
    : registrar_(std::move(registrar)), fanout_(fanout), busy_retry_hint_(busy_retry_hint) {}

Decision AdmissionPolicy::Decide(const Registration& registration, const Probes& probes) {
  Admission admission = registrar_.Decide(registration.request, probes.transport_health);
  if (admission.kind == Admission::Kind::kReject) {
    Decision decision = Reject(admission.code, admission.reason, admission.reason);
    // Another table: the Reject carries ours, so that the client can name the tensors that
    // differ.
    decision.send_table = std::any_of(admission.diffs.begin(), admission.diffs.end(),
                                      [](const FieldDiff& d) { return d.field == "table_digest"; });
    decision.diffs = std::move(admission.diffs);
    return decision;
  }
  const bool partial = registration.request.selected_table_digest.has_value();
  const Holding holding = probes.holding();
  if (!holding.complete && !holding.failure.empty()) {
    return Reject(StatusCode::kUnavailable,
                  "this instance is loading and its own load failed (" + holding.failure +
                      "); ask another source",
                  "this relay's own load failed");
  }
  if (!holding.complete && (!holding.stream_known || partial)) {
    if (holding.stream_known) {
      return Busy("partial loads are served once this instance's own load is complete",
                  busy_retry_hint_);
    }
    return Busy("this instance is loading and has not heard from its source yet",
                std::min(busy_retry_hint_, kWaitingRetryCap));
  }
  // At the fan-out limit, newcomers go to the relays loading from here (PROTOCOL.md 4.2.2).
  if (!partial && fanout_ > 0 && registrar_.active() >= fanout_ &&
      registration.redirects < static_cast<uint32_t>(kMaxRedirects)) {
    std::vector<std::string> relays = RelaysFor(probes.children(), registration.serve_endpoint);
    if (!relays.empty()) {
      Decision decision;
      decision.kind = Decision::Kind::kRedirect;
      decision.relays = std::move(relays);
      return decision;
    }
  }
  if (admission.kind == Admission::Kind::kBusy) return Busy(admission.reason, busy_retry_hint_);
  Decision accept;
  accept.kind = Decision::Kind::kAccept;
  return accept;
}

void AdmissionPolicy::Close(uint64_t session, const std::string& child) {
  registrar_.Close(session);
  redirected_.erase(child);
}

std::vector<std::string> AdmissionPolicy::RelaysFor(const std::vector<std::string>& children,
                                                    const std::string& newcomer) {
  std::vector<std::pair<uint64_t, std::string>> relays;
  for (const std::string& relay : children) {
    if (relay != newcomer) relays.emplace_back(redirected_[relay], relay);
  }
  std::stable_sort(relays.begin(), relays.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> endpoints;
  for (auto& [count, relay] : relays) endpoints.push_back(std::move(relay));
  if (!endpoints.empty()) ++redirected_[endpoints[0]];
  return endpoints;
}

}  // namespace netloader::serving
