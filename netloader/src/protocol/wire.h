#pragma once

// Conversions between netloader's types and the protobuf messages of proto/netloader.proto, and
// the size- and version-checked decoding of received bytes.

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "netloader/fingerprint.h"
#include "netloader/limits.h"
#include "netloader/src/stream/manifest.h"
#include "proto/netloader.pb.h"

namespace netloader {

// Serializes `envelope` after stamping it with kProtocolVersion.
std::string Encode(wire::Envelope& envelope);

// Parses one received message. Errors: ProtocolMismatch (empty, over `max_bytes`, does not
// parse, carries no body, or speaks another protocol version; the message says which).
Result<wire::Envelope> Decode(const void* data, size_t size, size_t max_bytes);

// "Register", "Accept", ...: the name of the message an envelope carries, for logs and replies.
const char* BodyName(const wire::Envelope& envelope);

// Checks what a server needs of a Register before comparing it (PROTOCOL.md, section 4.2): a
// partition within range, a table_digest of 32 lowercase hex digits, well-formed tensor
// patterns. InvalidArgument names the field.
Status ValidateRegister(const wire::Register& request);

void ToWire(const Fingerprint& fingerprint, wire::Fingerprint* out);
Fingerprint FromWire(const wire::Fingerprint& in);

// The tensor table of `model` as Reject.served_tensors.
void ToWire(const ModelView& model, wire::Reject* out);
// "the source has N tensors, this side M; first differences: ..." naming, by storage-order
// index, the first few tensors whose name, dtype, shape or size differ between the source's
// table (`served`) and `model`; empty when they do not differ.
std::string DescribeTableDifferences(
    const google::protobuf::RepeatedPtrField<wire::TensorInfo>& served, const ModelView& model);
// The same for a partial load's tables (both in name order), by name: the first few tensors
// only the source or only this side selected, or whose dtype, shape or size differ.
std::string DescribeSelectionDifferences(
    const google::protobuf::RepeatedPtrField<wire::TensorInfo>& served, const ModelView& model);

void ToWire(const Manifest& manifest, wire::Manifest* out);
// Errors: ProtocolMismatch (chunk size out of range).
Result<Manifest> FromWire(const wire::Manifest& in);

// A list of chunk indices as a Request's ranges (runs of consecutive chunks become one range).
void ToWire(const std::vector<size_t>& chunks, wire::Request* out);
// The chunks a Request names, in order (PROTOCOL.md, section 4.5): ranges need not ascend and
// may name a chunk again. Errors: InvalidArgument naming the one problem found, with its values:
// the Request has no range; a range is empty (count 0), starts at or past `chunk_count`, or
// reaches past it; or the ranges so far name more chunks in all than `chunk_count`. A stream of
// no chunks therefore has no valid Request.
Result<std::vector<size_t>> FromWire(const wire::Request& in, size_t chunk_count);

wire::RejectCode ToRejectCode(StatusCode code);
StatusCode FromRejectCode(wire::RejectCode code);

}  // namespace netloader
