#include "server/relay_state.h"

#include "netloader/fingerprint.h"
#include "netloader/src/base/clock.h"
#include "netloader/src/base/log.h"

namespace netloader::serving {

RelayState::RelayState(const ModelView& model, std::optional<Manifest> manifest,
                       uint64_t chunk_bytes, std::chrono::milliseconds stall_timeout,
                       std::string endpoint)
    : model_(model),
      relay_(!manifest.has_value()),
      chunk_bytes_(chunk_bytes),
      stall_timeout_(stall_timeout),
      endpoint_(std::move(endpoint)),
      table_digest_(TableDigest(model_)),
      complete_(!relay_) {
  if (manifest) Install(std::move(*manifest));
}

RelayState::Snapshot RelayState::Now() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {whole_, generation_, complete_, load_failure_, held_.bytes()};
}

std::shared_ptr<const Stream> RelayState::Selected(const std::vector<size_t>& selected,
                                                   ModelView view) {
  std::lock_guard<std::mutex> lock(mu_);
  if (std::shared_ptr<const Stream> cached = selections_.Find(selected)) return cached;
  const auto start = Clock::now();
  // Cut as the whole stream is (a relay's is its source's), which SubsetManifest assumes.
  auto stream = std::make_shared<const Stream>(std::move(view), manifest_.chunk_bytes,
                                               SubsetManifest(model_, manifest_, selected));
  Log().debug("stream of {} selected tensors ({} chunks) made in {:.3f} s",
              stream->view.tensors.size(), stream->plan.size(), SecondsSince(start));
  selections_.Add(selected, stream);
  return stream;
}

Status RelayState::WaitHeld(uint64_t generation, std::pair<uint64_t, uint64_t> range, size_t chunk,
                            const std::atomic<bool>& abort) {
  const auto [begin, end] = range;
  const auto deadline = Clock::now() + stall_timeout_;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (generation_ != generation) {
      return Status(StatusCode::kUnavailable,
                    "this relay's own load switched to other weights; ask another source");
    }
    if (complete_ || held_.Covers(begin, end)) return Status::Ok();
    if (!load_failure_.empty()) {
      return Status(StatusCode::kUnavailable, "this relay's own load failed: " + load_failure_);
    }
    if (abort.load()) {
      return Status(StatusCode::kCancelled, "stream cancelled at chunk " + std::to_string(chunk));
    }
    if (Clock::now() >= deadline) {
      return Status(StatusCode::kTimeout, "chunk " + std::to_string(chunk) +
                                              " was not verified here within " +
                                              std::to_string(stall_timeout_.count()) +
                                              " ms (this relay's own load is stalled)");
    }
    held_cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

Status RelayState::MarkLoaded() {
  if (!relay_) return Status::Ok();  // a server started over loaded weights holds them all
  uint64_t chunk_bytes = chunk_bytes_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (complete_) return Status::Ok();
    if (whole_) chunk_bytes = manifest_.chunk_bytes;  // keep the stream the clients know
  }
  const auto start = Clock::now();
  Manifest manifest = BuildManifest(model_, chunk_bytes);
  Log().info(
      "relay at {}: the host loaded the weights itself; digests computed in {:.3f} s, "
      "serving all of them",
      endpoint_, SecondsSince(start));
  std::lock_guard<std::mutex> lock(mu_);
  if (!whole_ || manifest.chunk_digests != manifest_.chunk_digests) Install(std::move(manifest));
  complete_ = true;
  load_failure_.clear();
  held_cv_.notify_all();
  return Status::Ok();
}

Status RelayState::Adopt(const Manifest& manifest) {
  std::lock_guard<std::mutex> lock(mu_);
  if (complete_) return Status::Ok();
  if (whole_ && manifest.tensor_digests == manifest_.tensor_digests) return Status::Ok();
  if (manifest.table_digest != table_digest_) {
    return Status(StatusCode::kFingerprintMismatch,
                  "the relay serves another tensor table than the one being loaded");
  }
  auto stream = std::make_shared<const Stream>(model_, manifest.chunk_bytes, manifest);
  if (stream->plan.size() != manifest.chunk_digests.size()) {
    return Status(StatusCode::kInternal, "the relay's chunk plan differs from its source's");
  }
  if (whole_) {
    Log().warn("relay at {}: its load now takes other weights; dropping {} bytes held", endpoint_,
               held_.bytes());
  }
  Install(manifest, std::move(stream));
  return Status::Ok();
}

void RelayState::Held(uint64_t begin, uint64_t end) {
  std::lock_guard<std::mutex> lock(mu_);
  held_.Add(begin, end);
  held_cv_.notify_all();
}

void RelayState::LoadEnded(const Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (complete_) return;
  if (status.ok() && whole_ && held_.bytes() == model_.total_bytes()) {
    complete_ = true;
    Log().info("relay at {}: loaded and verified; serving as a source", endpoint_);
  } else {
    load_failure_ = status.ok() ? "it ended without every byte" : status.ToString();
    Log().warn(
        "relay at {}: its own load failed; refusing clients until the host loads the "
        "weights otherwise (MarkLoaded): {}",
        endpoint_, load_failure_);
  }
  held_cv_.notify_all();
}

void RelayState::Install(Manifest manifest, std::shared_ptr<const Stream> stream) {
  if (!stream) stream = std::make_shared<const Stream>(model_, manifest.chunk_bytes, manifest);
  manifest_ = std::move(manifest);
  whole_ = std::move(stream);
  selections_.Clear();
  held_.Clear();
  ++generation_;
  held_cv_.notify_all();
}

}  // namespace netloader::serving
