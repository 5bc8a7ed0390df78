#pragma once

// What a holder publishes in the registry, and how a client picks its sources from what it
// finds (DESIGN.md, "The registry"). Pure functions: no etcd, no sockets.

#include <cstdint>
#include <string>
#include <vector>

#include "netloader/status.h"
#include "netloader/tensor.h"

namespace netloader::registry {

// The record format's version: a record of another is skipped, with a warning.
inline constexpr int kRecordVersion = 1;

// One holder: a server, or a relay that serves while it loads. Kept small: no manifest.
struct Record {
  std::string endpoint;  // its ZeroMQ endpoint, as a client gives it to Register
  // Different for every process that serves at `endpoint`, larger for a later one: a record left
  // by a dead process on a reused endpoint loses to its successor's.
  uint64_t generation = 0;
  std::string model_id;
  Partition partition;
  std::string table_digest;  // empty while a relay waits for its source's manifest
  // "loading" (a relay, serving bytes_held), "ready" (holds every byte), "unavailable" (its
  // data plane cannot take a client now) or "draining" (stopping).
  std::string state;
  uint64_t bytes_held = 0;
  uint64_t bytes_total = 0;
  int free_slots = 0;    // sessions it would open now before answering Busy
  std::string topology;  // a label (rack, zone) that clients prefer to share
};

std::string ToJson(const Record& record);
// Errors: InvalidArgument naming what is wrong (not JSON, another version, a missing field).
Result<Record> FromJson(const std::string& text);

// The key a record lives under: <prefix>holders/<endpoint>/<generation, 16 hex digits>.
std::string RecordKey(const std::string& prefix, const Record& record);

// What a client asks for, and where it stands.
struct Wanted {
  std::string model_id;  // empty: any (the fingerprint is checked at Register anyway)
  Partition partition;
  bool whole_model = true;   // a partial load may take another pipeline split
  std::string table_digest;  // empty: not compared
  std::string topology;      // the client's label; empty: no preference
  std::string identity;      // stable per client (its serve endpoint, else host and pid)
  std::string self;          // an endpoint to leave out: the client's own relay
};

// The name (a key under the registry's prefix) that the instance reading `wanted` from storage
// in a cold start claims: readers/<table digest>/<hash of model id and partition>.
std::string ReaderClaimName(const Wanted& wanted);

// The endpoints to try, best first: holders of the wanted model and partition that can serve
// (ready, or loading with bytes held; never unavailable or draining), one per endpoint (the
// highest generation), ordered by: ready before loading; a free slot before none; the
// client's topology label before others; then weighted rendezvous hashing of the client's
// identity with each endpoint, weighted by free slots, so that a burst spreads over the
// holders and a holder that leaves moves only its own clients.
std::vector<std::string> Choose(const std::vector<Record>& records, const Wanted& wanted);

}  // namespace netloader::registry
