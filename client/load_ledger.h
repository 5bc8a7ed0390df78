#pragma once

// The ledger of one load: what its sources share. The stream bytes verified so far and whose
// weights they are, so that a load resumes where a failed source stopped; the bytes each source
// is fetching (striping: sources claim disjoint chunks, a few at a time, so a slower one gets
// fewer); and what LoadStats reports. Plain bookkeeping, no sockets. Thread-safe: every source of
// a striped load calls it from its own thread.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "netloader/client.h"
#include "netloader/src/stream/chunk_stream.h"
#include "netloader/src/stream/relay_feed.h"

namespace netloader::internal {

class LoadLedger {
 public:
  // A load of `total` stream bytes from up to `stripe` sources at once. `progress` (may be
  // empty) is called after each verified chunk, never twice at once; `relay` (may be null) is
  // told what is verified as it is.
  LoadLedger(uint64_t total, int stripe, ProgressCallback progress, RelayFeed* relay);

  // Attaches a source, by its per-tensor digests, until Detach. Bytes verified under other
  // digests (a source holding other weights of the same layout) are dropped when no other source
  // is attached; while one is, this source is refused (FingerprintMismatch) instead: never a mix
  // of two models.
  Status Attach(const std::vector<uint64_t>& content, const std::string& source);
  void Detach();

  // A relay over the destination serves the attached source's stream from now on, with what is
  // verified already.
  void Relay(const Manifest& manifest, const std::string& source);

  // A delta load: the chunks whose bytes already match the source's digests count as verified
  // (one pass over the destination, hashing at memory speed).
  void KeepWhatIsInPlace(const ReceivePlan& plan);

  // Chunks of `plan`, in order, neither verified nor being fetched from another source, now
  // marked as being fetched: all of them for a lone source; striped, at most `max_chunks`, and
  // fewer as the end nears (a share of what is left), so that the sources finish together.
  // Empty when there are none just now. `*from` is where to start looking: every chunk before
  // it is verified (it moves on with each call, so a long load does not rescan its start).
  std::vector<size_t> Claim(const ReceivePlan& plan, size_t max_chunks, size_t* from);
  // Stream bytes [begin, end) arrived and matched their digest.
  void Verified(uint64_t begin, uint64_t end);
  // Gives back claimed chunks of `plan` that were not verified (their source failed), for the
  // other sources to take.
  void Release(const ReceivePlan& plan, const std::vector<size_t>& chunks);
  // Waits until a chunk is verified or given back, for at most `timeout`.
  void WaitForChange(std::chrono::milliseconds timeout);

  // The load's outcome, for the relay.
  void Ended(const Status& status);

  bool complete() const;
  uint64_t verified_bytes() const;
  uint64_t reused_bytes() const;  // found already in place (KeepWhatIsInPlace)
  void AddReceived(uint64_t bytes) { received_ += bytes; }
  uint64_t received_bytes() const { return received_.load(); }

 private:
  const uint64_t total_;
  const int stripe_;
  const ProgressCallback progress_;
  RelayFeed* const relay_;  // ClientOptions::relay's, or null
  mutable std::mutex mu_;   // guards the fields below
  std::condition_variable changed_;
  ByteRanges verified_;                // stream bytes received and verified so far
  ByteRanges claimed_;                 // stream bytes a source is fetching
  std::vector<uint64_t> content_;      // the per-tensor digests they were verified under
  int attached_ = 0;                   // sources between Attach and Detach
  uint64_t reused_ = 0;                // found already in place (ClientOptions::destination_filled)
  std::atomic<uint64_t> received_{0};  // chunks posted for, over every source (LoadStats)
  std::mutex progress_mu_;             // one progress call at a time
};

}  // namespace netloader::internal
