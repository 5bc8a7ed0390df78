#pragma once

// Which source a load tries next, and what the attempts came to. Sources are tried in the given
// order, up to ClientOptions::stripe at once; one that fails is replaced by the next untried
// one. A redirect puts the relays it names next, then the source that redirected again (each
// once among those still to try; at most kMaxRedirects per load). The load is over once one
// source delivered, or no source is left. Plain bookkeeping, no sockets. Thread-safe: the
// threads of a striped load share one schedule.

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "netloader/client.h"

namespace netloader::internal {

class SourceSchedule {
 public:
  // One attempt's source: its place in the order tried, and the redirects followed before it.
  struct Turn {
    size_t index = 0;
    std::string source;
    int redirects = 0;
  };

  explicit SourceSchedule(std::vector<std::string> sources) : sources_(std::move(sources)) {}

  // The next source to try; nothing once a source delivered, none is left untried, or
  // `cancelled`.
  std::optional<Turn> Next(bool cancelled);
  // `turn`'s source delivered the model; `bytes` of it came from there.
  void Delivered(const Turn& turn, LoadStats stats, uint64_t bytes);
  // `turn`'s source failed with `status` after delivering `bytes`. `redirect`: the relays it
  // redirected the client to (empty: it did not redirect).
  void Failed(const Turn& turn, const Status& status, uint64_t bytes,
              const std::vector<std::string>& redirect, bool cancelled);

  // Once every attempt has returned: the delivering source's stats with every attempt in the
  // order tried; or why nothing was delivered, naming each source's failure and every refusal's
  // differing fields once (Cancelled when `cancelled`; otherwise the last failure's code).
  Result<LoadStats> Outcome(bool cancelled);

 private:
  std::mutex mu_;  // guards the fields below
  std::vector<std::string> sources_;
  size_t next_ = 0;  // sources_[next_] is the next to try
  int redirects_ = 0;
  std::vector<std::pair<size_t, SourceAttempt>> attempts_;  // by Turn::index, as they ended
  std::optional<LoadStats> delivered_;
  std::string failures_;
  std::vector<FieldDiff> diffs_;  // every refusal's, each once
  StatusCode last_ = StatusCode::kUnavailable;
};

}  // namespace netloader::internal
