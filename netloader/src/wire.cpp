#include "netloader/src/wire.h"

namespace netloader {

std::string Encode(wire::Envelope& envelope) {
  envelope.set_protocol_version(kProtocolVersion);
  return envelope.SerializeAsString();
}

Result<wire::Envelope> Decode(const void* data, size_t size, size_t max_bytes) {
  if (size > max_bytes) {
    return Status(StatusCode::kInvalidArgument, "message of " + std::to_string(size) +
                                                    " bytes exceeds the limit of " +
                                                    std::to_string(max_bytes));
  }
  wire::Envelope envelope;
  if (!envelope.ParseFromArray(data, static_cast<int>(size))) {
    return Status(StatusCode::kProtocolMismatch,
                  "message of " + std::to_string(size) + " bytes is not a netloader message");
  }
  if (envelope.protocol_version() != kProtocolVersion) {
    return Status(StatusCode::kProtocolMismatch,
                  "peer speaks protocol version " + std::to_string(envelope.protocol_version()) +
                      ", this build speaks " + std::to_string(kProtocolVersion));
  }
  if (envelope.body_case() == wire::Envelope::BODY_NOT_SET) {
    return Status(StatusCode::kProtocolMismatch, "message carries no body");
  }
  return envelope;
}

void ToWire(const Fingerprint& fp, wire::Fingerprint* out) {
  out->set_model_id(fp.model_id);
  out->set_table_digest(fp.table_digest);
  wire::Partition* p = out->mutable_partition();
  p->set_tp_size(static_cast<uint32_t>(fp.partition.tp_size));
  p->set_tp_rank(static_cast<uint32_t>(fp.partition.tp_rank));
  p->set_pp_size(static_cast<uint32_t>(fp.partition.pp_size));
  p->set_pp_rank(static_cast<uint32_t>(fp.partition.pp_rank));
  p->set_layout_key(fp.partition.layout_key);
}

Fingerprint FromWire(const wire::Fingerprint& in) {
  Fingerprint fp;
  fp.model_id = in.model_id();
  fp.table_digest = in.table_digest();
  // Values beyond int range compare as different rather than wrapping.
  auto to_int = [](uint32_t v) { return v > INT32_MAX ? -1 : static_cast<int>(v); };
  fp.partition.tp_size = to_int(in.partition().tp_size());
  fp.partition.tp_rank = to_int(in.partition().tp_rank());
  fp.partition.pp_size = to_int(in.partition().pp_size());
  fp.partition.pp_rank = to_int(in.partition().pp_rank());
  fp.partition.layout_key = in.partition().layout_key();
  return fp;
}

void ToWire(const Manifest& manifest, wire::Manifest* out) {
  out->set_table_digest(manifest.table_digest);
  out->mutable_tensor_digests()->Add(manifest.tensor_digests.begin(),
                                     manifest.tensor_digests.end());
  out->set_chunk_bytes(manifest.chunk_bytes);
  out->mutable_chunk_digests()->Add(manifest.chunk_digests.begin(), manifest.chunk_digests.end());
  out->set_model_digest(manifest.model_digest);
}

Result<Manifest> FromWire(const wire::Manifest& in) {
  if (in.chunk_bytes() < kMinChunkBytes || in.chunk_bytes() > kMaxChunkBytes) {
    return Status(StatusCode::kProtocolMismatch,
                  "manifest chunk size " + std::to_string(in.chunk_bytes()) + " is out of range");
  }
  Manifest manifest;
  manifest.table_digest = in.table_digest();
  manifest.tensor_digests.assign(in.tensor_digests().begin(), in.tensor_digests().end());
  manifest.chunk_bytes = in.chunk_bytes();
  manifest.chunk_digests.assign(in.chunk_digests().begin(), in.chunk_digests().end());
  manifest.model_digest = in.model_digest();
  return manifest;
}

wire::RejectCode ToRejectCode(StatusCode code) {
  switch (code) {
    case StatusCode::kFingerprintMismatch:
      return wire::FINGERPRINT_MISMATCH;
    case StatusCode::kProtocolMismatch:
      return wire::PROTOCOL_MISMATCH;
    case StatusCode::kUnavailable:
      return wire::UNAVAILABLE;
    default:
      return wire::INVALID_REQUEST;
  }
}

StatusCode FromRejectCode(wire::RejectCode code) {
  switch (code) {
    case wire::FINGERPRINT_MISMATCH:
      return StatusCode::kFingerprintMismatch;
    case wire::PROTOCOL_MISMATCH:
      return StatusCode::kProtocolMismatch;
    case wire::UNAVAILABLE:
      return StatusCode::kUnavailable;
    default:
      return StatusCode::kInvalidArgument;
  }
}

}  // namespace netloader
