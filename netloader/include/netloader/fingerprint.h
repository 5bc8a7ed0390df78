#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "netloader/export.h"
#include "netloader/status.h"
#include "netloader/tensor.h"

namespace netloader {

// The protocol version this build speaks. Peers of another version are refused by name.
inline constexpr uint32_t kProtocolVersion = 5;  // 5: relay fan-out (PROTOCOL.md, section 10)

// What must match before a single byte moves (DESIGN.md, "Fingerprint").
struct Fingerprint {
  uint32_t protocol_version = kProtocolVersion;
  // Optional checkpoint identity such as "org/model@revision". Compared only when the client
  // declares one; a server that declares none then cannot vouch for it and refuses.
  std::string model_id;
  // Hex XXH3-128 of the ordered tensor table (names, dtypes, shapes, byte sizes): computable from
  // safetensors headers without reading tensor data.
  std::string table_digest;
  Partition partition;
};

// Digest of the ordered tensor table of `model` (see Fingerprint::table_digest).
NETLOADER_EXPORT std::string TableDigest(const ModelView& model);

NETLOADER_EXPORT Fingerprint MakeFingerprint(const ModelView& model, std::string model_id,
                                             Partition partition);

// Every field in which `client` differs from `server`; empty when the client may be served.
// With `partial` (a partial load: the tables are of the selected tensors), the pipeline split
// (pp_size, pp_rank) is not compared: a pipeline stage holds whole tensors, the same bytes in
// every split. Tensor-parallel shards and layout_key still must match.
NETLOADER_EXPORT std::vector<FieldDiff> CompareFingerprints(const Fingerprint& server,
                                                            const Fingerprint& client,
                                                            bool partial = false);

// "field: server=X client=Y; ..." for logs and error messages.
NETLOADER_EXPORT std::string DescribeDiffs(const std::vector<FieldDiff>& diffs);

}  // namespace netloader
