#include "netloader/fingerprint.h"

#include <cstdio>

#include "netloader/src/base/xxh3.h"

namespace netloader {
namespace {

void Update(XXH3_state_t* state, const void* data, size_t size) {
  XXH3_128bits_update(state, data, size);
}

void UpdateU64(XXH3_state_t* state, uint64_t value) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
  Update(state, bytes, sizeof bytes);
}

}  // namespace

std::string TableDigest(const ModelView& model) {
  // Length-prefixed fields in a fixed byte order, so that no two tables share an encoding.
  const Xxh3State owned(XXH3_createState());
  XXH3_state_t* state = owned.get();
  XXH3_128bits_reset(state);
  UpdateU64(state, model.tensors.size());
  for (const TensorView& t : model.tensors) {
    UpdateU64(state, t.name.size());
    Update(state, t.name.data(), t.name.size());
    const std::string_view dtype = DTypeName(t.dtype);
    UpdateU64(state, dtype.size());
    Update(state, dtype.data(), dtype.size());
    UpdateU64(state, t.shape.size());
    for (int64_t dim : t.shape) UpdateU64(state, static_cast<uint64_t>(dim));
    UpdateU64(state, t.size_bytes);
  }
  const XXH128_hash_t hash = XXH3_128bits_digest(state);
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(hash.high64),
                static_cast<unsigned long long>(hash.low64));
  return hex;
}

Fingerprint MakeFingerprint(const ModelView& model, std::string model_id, Partition partition) {
  Fingerprint fp;
  fp.model_id = std::move(model_id);
  fp.table_digest = TableDigest(model);
  fp.partition = std::move(partition);
  return fp;
}

std::vector<FieldDiff> CompareFingerprints(const Fingerprint& server, const Fingerprint& client,
                                           bool partial) {
  std::vector<FieldDiff> diffs;
  auto check = [&](const char* field, const std::string& s, const std::string& c) {
    if (s != c) diffs.push_back({field, s, c});
  };
  auto check_int = [&](const char* field, int64_t s, int64_t c) {
    check(field, std::to_string(s), std::to_string(c));
  };
  check_int("protocol_version", server.protocol_version, client.protocol_version);
  if (!client.model_id.empty()) check("model_id", server.model_id, client.model_id);
  check("table_digest", server.table_digest, client.table_digest);
  check_int("partition.tp_size", server.partition.tp_size, client.partition.tp_size);
  check_int("partition.tp_rank", server.partition.tp_rank, client.partition.tp_rank);
  if (!partial) {
    check_int("partition.pp_size", server.partition.pp_size, client.partition.pp_size);
    check_int("partition.pp_rank", server.partition.pp_rank, client.partition.pp_rank);
  }
  check("partition.layout_key", server.partition.layout_key, client.partition.layout_key);
  return diffs;
}

std::string DescribeDiffs(const std::vector<FieldDiff>& diffs) {
  std::string text;
  for (const FieldDiff& d : diffs) {
    if (!text.empty()) text += "; ";
    text += d.field + ": server='" + d.server_value + "' client='" + d.client_value + "'";
  }
  return text;
}

}  // namespace netloader
