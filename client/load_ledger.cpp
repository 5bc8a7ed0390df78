#include "client/load_ledger.h"

#include <algorithm>

#include "netloader/src/base/log.h"

namespace netloader::internal {

LoadLedger::LoadLedger(uint64_t total, int stripe, ProgressCallback progress, RelayFeed* relay)
    : total_(total), stripe_(stripe), progress_(std::move(progress)), relay_(relay) {}

Status LoadLedger::Attach(const std::vector<uint64_t>& content, const std::string& source) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!content_.empty() && content != content_) {
    if (attached_ > 0) {
      return Status(StatusCode::kFingerprintMismatch,
                    source +
                        " holds other weights (per-tensor digests) than the sources it "
                        "would be striped with");
    }
    if (verified_.bytes() > 0) {
      Log().warn(
          "{} holds other content than the source that delivered the {} bytes verified "
          "so far; loading all of it from {}",
          source, verified_.bytes(), source);
    }
    verified_.Clear();
    reused_ = 0;
  }
  content_ = content;
  ++attached_;
  return Status::Ok();
}

void LoadLedger::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  --attached_;
}

void LoadLedger::Relay(const Manifest& manifest, const std::string& source) {
  if (relay_ == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  Status adopted = relay_->Adopt(manifest);
  if (!adopted.ok()) {
    Log().warn("the relay cannot serve {}'s stream: {}", source, adopted.ToString());
    return;
  }
  verified_.ForEach([&](uint64_t begin, uint64_t end) { relay_->Held(begin, end); });
}

void LoadLedger::KeepWhatIsInPlace(const ReceivePlan& plan) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t c : plan.Missing(verified_)) {
    const auto [begin, end] = plan.range(c);
    if (claimed_.Intersects(begin, end) || !plan.Holds(c)) continue;
    verified_.Add(begin, end);
    reused_ += end - begin;
    if (relay_ != nullptr) relay_->Held(begin, end);
  }
}

void LoadLedger::Ended(const Status& status) {
  if (relay_ != nullptr) relay_->LoadEnded(status);
}

std::vector<size_t> LoadLedger::Claim(const ReceivePlan& plan, size_t max_chunks, size_t* from) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t limit = max_chunks;
  if (stripe_ > 1) {
    const uint64_t left = total_ - verified_.bytes() - claimed_.bytes();
    const uint64_t chunk = std::max<uint64_t>(1, total_ / std::max<size_t>(1, plan.size()));
    const size_t share = static_cast<size_t>(left / chunk) / (2 * stripe_);
    limit = std::clamp<size_t>(share, 1, max_chunks);
  }
  std::vector<size_t> chunks;
  bool all_verified_so_far = true;
  for (size_t c = *from; c < plan.size() && chunks.size() < limit; ++c) {
    const auto [begin, end] = plan.range(c);
    if (verified_.Covers(begin, end)) {
      if (all_verified_so_far) *from = c + 1;
      continue;
    }
    all_verified_so_far = false;
    if (claimed_.Intersects(begin, end)) continue;
    claimed_.Add(begin, end);
    chunks.push_back(c);
  }
  return chunks;
}

void LoadLedger::Verified(uint64_t begin, uint64_t end) {
  uint64_t done = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    verified_.Add(begin, end);
    claimed_.Remove(begin, end);
    done = verified_.bytes();
    if (relay_ != nullptr) relay_->Held(begin, end);
  }
  changed_.notify_all();
  if (progress_) {
    std::lock_guard<std::mutex> lock(progress_mu_);
    progress_(done, total_);
  }
}

void LoadLedger::Release(const ReceivePlan& plan, const std::vector<size_t>& chunks) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t c : chunks) {
      const auto [begin, end] = plan.range(c);
      if (!verified_.Covers(begin, end)) claimed_.Remove(begin, end);
    }
  }
  changed_.notify_all();
}

void LoadLedger::WaitForChange(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, timeout);
}

bool LoadLedger::complete() const {
  std::lock_guard<std::mutex> lock(mu_);
  return verified_.bytes() == total_;
}

uint64_t LoadLedger::verified_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return verified_.bytes();
}

uint64_t LoadLedger::reused_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reused_;
}

}  // namespace netloader::internal
