#pragma once

// Conversions between netloader's types and the protobuf messages of proto/netloader.proto, and
// the size- and version-checked decoding of received bytes.

#include <cstddef>
#include <string>

#include "netloader/fingerprint.h"
#include "netloader/src/manifest.h"
#include "proto/netloader.pb.h"

namespace netloader {

// Largest control message a server reads; Register and Done are a few hundred bytes.
inline constexpr size_t kMaxServerMessageBytes = 64 << 10;
// Largest message a client reads: an Accept carries the manifest (~100 B per tensor).
inline constexpr size_t kMaxClientMessageBytes = 256 << 20;

// Serializes `envelope` after stamping it with kProtocolVersion.
std::string Encode(wire::Envelope& envelope);

// Parses one received message. Errors: InvalidArgument (over `max_bytes`), ProtocolMismatch
// (does not parse, carries no body, or speaks another protocol version; the message says which).
Result<wire::Envelope> Decode(const void* data, size_t size, size_t max_bytes);

void ToWire(const Fingerprint& fingerprint, wire::Fingerprint* out);
Fingerprint FromWire(const wire::Fingerprint& in);

void ToWire(const Manifest& manifest, wire::Manifest* out);
// Errors: ProtocolMismatch (chunk size out of range).
Result<Manifest> FromWire(const wire::Manifest& in);

wire::RejectCode ToRejectCode(StatusCode code);
StatusCode FromRejectCode(wire::RejectCode code);

}  // namespace netloader
