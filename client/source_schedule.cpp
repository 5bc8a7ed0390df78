#include "client/source_schedule.h"

#include <algorithm>

#include "client/cancel.h"
#include "netloader/src/base/log.h"
#include "netloader/src/metrics/metrics.h"

namespace netloader::internal {

std::optional<SourceSchedule::Turn> SourceSchedule::Next(bool cancelled) {
  std::lock_guard<std::mutex> lock(mu_);
  if (next_ == sources_.size() || delivered_ || cancelled) return std::nullopt;
  const size_t index = next_++;
  return Turn{index, sources_[index], redirects_};
}

void SourceSchedule::Delivered(const Turn& turn, LoadStats stats, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  attempts_.push_back({turn.index, {turn.source, Status::Ok(), bytes}});
  delivered_ = std::move(stats);
}

void SourceSchedule::Failed(const Turn& turn, const Status& status, uint64_t bytes,
                            const std::vector<std::string>& redirect, bool cancelled) {
  std::lock_guard<std::mutex> lock(mu_);
  attempts_.push_back({turn.index, {turn.source, status, bytes}});
  if (cancelled) return;
  if (!redirect.empty() && redirects_ < kMaxRedirects) {
    Log().info("{}: {}", turn.source, status.message());
    // The relays, then the redirecting source again; each once among those still to try.
    std::vector<std::string> next = redirect;
    next.push_back(turn.source);
    const auto untried = sources_.begin() + static_cast<std::ptrdiff_t>(next_);
    std::vector<std::string> fresh;
    for (const std::string& to : next) {
      if (std::find(untried, sources_.end(), to) == sources_.end() &&
          std::find(fresh.begin(), fresh.end(), to) == fresh.end()) {
        fresh.push_back(to);
      }
    }
    sources_.insert(untried, fresh.begin(), fresh.end());
    ++redirects_;
    metrics::RedirectFollowed();
    return;
  }
  Log().warn("source {} failed: {}", turn.source, status.ToString());
  failures_ += (failures_.empty() ? "" : "; ") + turn.source + ": " + status.ToString();
  last_ = status.code();
  for (const FieldDiff& d : status.diffs()) {
    if (std::find(diffs_.begin(), diffs_.end(), d) == diffs_.end()) diffs_.push_back(d);
  }
}

Result<LoadStats> SourceSchedule::Outcome(bool cancelled) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!delivered_ && cancelled) {
    Status status = CancelledStatus();
    if (failures_.empty()) return status;
    return Status(status.code(), status.message() + " (" + failures_ + ")", diffs_);
  }
  if (!delivered_) {
    return Status(last_, "no source delivered the model (" + failures_ + ")", diffs_);
  }
  LoadStats stats = std::move(*delivered_);
  delivered_.reset();
  std::sort(attempts_.begin(), attempts_.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [index, attempt] : attempts_) stats.attempts.push_back(std::move(attempt));
  attempts_.clear();
  return stats;
}

}  // namespace netloader::internal
