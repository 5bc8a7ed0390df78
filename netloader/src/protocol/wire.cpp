#include "netloader/src/protocol/wire.h"

#include <algorithm>
#include <map>

namespace netloader {

std::string Encode(wire::Envelope& envelope) {
  envelope.set_protocol_version(kProtocolVersion);
  return envelope.SerializeAsString();
}

Result<wire::Envelope> Decode(const void* data, size_t size, size_t max_bytes) {
  if (size == 0) {
    return Status(StatusCode::kProtocolMismatch, "empty message (0 bytes, no Envelope)");
  }
  if (size > max_bytes) {
    return Status(StatusCode::kProtocolMismatch, "message of " + std::to_string(size) +
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

const char* BodyName(const wire::Envelope& envelope) {
  switch (envelope.body_case()) {
    case wire::Envelope::kRegister:
      return "Register";
    case wire::Envelope::kAccept:
      return "Accept";
    case wire::Envelope::kReject:
      return "Reject";
    case wire::Envelope::kBusy:
      return "Busy";
    case wire::Envelope::kDone:
      return "Done";
    case wire::Envelope::kHeartbeat:
      return "Heartbeat";
    case wire::Envelope::kRequest:
      return "Request";
    case wire::Envelope::kRedirect:
      return "Redirect";
    case wire::Envelope::kStatusRequest:
      return "StatusRequest";
    case wire::Envelope::kStatus:
      return "ServerStatus";
    case wire::Envelope::BODY_NOT_SET:
      break;
  }
  return "an empty envelope";
}

void ToWire(const std::vector<size_t>& chunks, wire::Request* out) {
  for (size_t i = 0; i < chunks.size();) {
    size_t j = i + 1;
    while (j < chunks.size() && chunks[j] == chunks[j - 1] + 1) ++j;
    wire::ChunkRange* range = out->add_ranges();
    range->set_first(chunks[i]);
    range->set_count(j - i);
    i = j;
  }
}

Result<std::vector<size_t>> FromWire(const wire::Request& in, size_t chunk_count) {
  const auto invalid = [](const std::string& what) {
    return Status(StatusCode::kInvalidArgument, what);
  };
  // "the 7 chunks of the stream (0 to 6)": the valid indices, for the messages below.
  const std::string stream = chunk_count == 0 ? std::string("the stream, which has no chunks")
                                              : "the " + std::to_string(chunk_count) +
                                                    " chunks of the stream (0 to " +
                                                    std::to_string(chunk_count - 1) + ")";
  if (in.ranges().empty()) {
    return invalid("the Request has no range; it must name at least one chunk of " + stream);
  }
  std::vector<size_t> chunks;
  for (int i = 0; i < in.ranges_size(); ++i) {
    const wire::ChunkRange& range = in.ranges(i);
    const std::string named = "Request range " + std::to_string(i) + " {first " +
                              std::to_string(range.first()) + ", count " +
                              std::to_string(range.count()) + "}";
    if (range.count() == 0) return invalid(named + " is empty (count 0)");
    if (range.first() >= chunk_count) return invalid(named + " starts outside " + stream);
    if (range.count() > chunk_count - range.first()) {
      // The range's last chunk, first + count - 1 (saturating: count is the peer's).
      const uint64_t last =
          range.first() + std::min<uint64_t>(range.count() - 1, UINT64_MAX - range.first());
      return invalid(named + " reaches chunk " + std::to_string(last) + ", outside " + stream);
    }
    if (range.count() > chunk_count - chunks.size()) {
      return invalid(named + " brings the Request to " +
                     std::to_string(chunks.size() + range.count()) + " chunks, more than the " +
                     std::to_string(chunk_count) +
                     " the stream has (a Request may name a chunk twice, but not more chunks "
                     "in all than the stream has)");
    }
    for (uint64_t c = range.first(); c < range.first() + range.count(); ++c) chunks.push_back(c);
  }
  return chunks;
}

Status ValidateRegister(const wire::Register& request) {
  auto invalid = [](const std::string& what) {
    return Status(StatusCode::kInvalidArgument, "Register." + what);
  };
  if (!request.fingerprint().has_partition()) {
    return invalid("fingerprint.partition is missing");
  }
  Status partition = ValidatePartition(FromWire(request.fingerprint()).partition);
  if (!partition.ok()) return invalid("fingerprint.partition: " + partition.message());
  const std::string& digest = request.fingerprint().table_digest();
  if (digest.size() != 32 || digest.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return invalid("fingerprint.table_digest '" + digest.substr(0, 64) +
                   "' is not 32 lowercase hex digits");
  }
  for (int i = 0; i < request.tensors_size(); ++i) {
    Status pattern = ValidateTensorPattern(request.tensors(i));
    if (!pattern.ok()) return invalid("tensors[" + std::to_string(i) + "]: " + pattern.message());
  }
  if (request.serve_endpoint().size() > kMaxEndpointBytes) {
    return invalid("serve_endpoint is " + std::to_string(request.serve_endpoint().size()) +
                   " bytes, more than " + std::to_string(kMaxEndpointBytes));
  }
  return Status::Ok();
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

void ToWire(const ModelView& model, wire::Reject* out) {
  for (const TensorView& t : model.tensors) {
    wire::TensorInfo* info = out->add_served_tensors();
    info->set_name(t.name);
    info->set_dtype(std::string(DTypeName(t.dtype)));
    info->mutable_shape()->Add(t.shape.begin(), t.shape.end());
    info->set_size_bytes(t.size_bytes);
  }
}

namespace {

// "'name' DTYPE [d0, d1] (N bytes)": one tensor table entry, for the messages naming tables'
// differences.
std::string Describe(const std::string& name, std::string_view dtype,
                     const std::vector<int64_t>& shape, uint64_t size_bytes) {
  std::string text = "'" + name + "' " + std::string(dtype) + " [";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "] (" + std::to_string(size_bytes) + " bytes)";
}
std::string Describe(const wire::TensorInfo& t) {
  return Describe(t.name(), t.dtype(), {t.shape().begin(), t.shape().end()}, t.size_bytes());
}
std::string Describe(const TensorView& t) {
  return Describe(t.name, DTypeName(t.dtype), t.shape, t.size_bytes);
}

}  // namespace

std::string DescribeTableDifferences(
    const google::protobuf::RepeatedPtrField<wire::TensorInfo>& served, const ModelView& model) {
  constexpr size_t kShown = 3;
  if (served.empty()) return "";  // the source sent no table: the tables were not the problem
  const size_t n = std::max<size_t>(served.size(), model.tensors.size());
  std::string shown;
  size_t differing = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool on_server = i < static_cast<size_t>(served.size());
    const bool here = i < model.tensors.size();
    std::string server_side = "none", client_side = "none";
    if (on_server) server_side = Describe(served[static_cast<int>(i)]);
    if (here) client_side = Describe(model.tensors[i]);
    if (server_side == client_side) continue;
    if (++differing <= kShown) {
      shown += (shown.empty() ? "" : "; ") + ("tensor " + std::to_string(i) + ": source " +
                                              server_side + ", this side " + client_side);
    }
  }
  if (differing == 0) return "";
  std::string text = "the source has " + std::to_string(served.size()) + " tensors, this side " +
                     std::to_string(model.tensors.size()) + "; " + std::to_string(differing) +
                     " differ by position, first: " + shown;
  if (differing > kShown) text += "; and " + std::to_string(differing - kShown) + " more";
  return text;
}

std::string DescribeSelectionDifferences(
    const google::protobuf::RepeatedPtrField<wire::TensorInfo>& served, const ModelView& model) {
  constexpr size_t kShown = 3;
  std::map<std::string, std::pair<std::string, std::string>> sides;  // name -> (source, here)
  for (const wire::TensorInfo& s : served) sides[s.name()].first = Describe(s);
  for (const TensorView& t : model.tensors) sides[t.name].second = Describe(t);
  std::string shown;
  size_t differing = 0;
  for (const auto& [name, both] : sides) {
    if (both.first == both.second) continue;
    if (++differing > kShown) continue;
    shown += shown.empty() ? "" : "; ";
    if (both.first.empty()) {
      shown += "the source has no '" + name + "'";
    } else if (both.second.empty()) {
      shown += "only the source selects " + both.first;
    } else {
      shown += "source " + both.first + ", this side " + both.second;
    }
  }
  if (differing == 0) return "";
  std::string text = "the patterns select " + std::to_string(served.size()) +
                     " tensors on the source, " + std::to_string(model.tensors.size()) + " here; " +
                     std::to_string(differing) + " differ: " + shown;
  if (differing > kShown) text += "; and " + std::to_string(differing - kShown) + " more";
  return text;
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
