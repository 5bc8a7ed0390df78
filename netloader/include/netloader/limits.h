#pragma once

// The netloader protocol's limits: the one home of every bound a peer must respect, for this
// implementation and for a second one (PROTOCOL.md, section 8, lists these values; a unit test
// holds the two together).

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace netloader {

// Largest control message a server reads; Register and Done are a few hundred bytes (a partial
// load's Register up to ~60 KiB of tensor names: kMaxTensorPatternBytes). Larger ones up to
// kServerCutoffBytes get Reject{PROTOCOL_MISMATCH}; beyond that ZeroMQ closes the connection
// (ZMQ_MAXMSGSIZE), which bounds what a peer can make the server buffer.
inline constexpr size_t kMaxServerMessageBytes = 64 << 10;
inline constexpr size_t kServerCutoffBytes = 256 << 10;
// Largest message a client reads: an Accept carries the manifest (~100 B per tensor).
inline constexpr size_t kMaxClientMessageBytes = 256 << 20;

// The most bytes of tensor names or patterns one Register carries: about a thousand names of 60
// characters (ClientOptions::tensors).
inline constexpr size_t kMaxTensorPatternBytes = 60 << 10;

// Longest endpoint a Register's serve_endpoint or a Redirect's source may be.
inline constexpr size_t kMaxEndpointBytes = 256;
// Most sources one Redirect lists (a server names at most these of its relays).
inline constexpr int kMaxRedirectSources = 16;
// The most redirects one load follows (ClientOptions::sources).
inline constexpr int kMaxRedirects = 16;

// Largest chunk the data plane accepts (one MPI message; counts are int), and the smallest.
inline constexpr uint64_t kMaxChunkBytes = 1ull << 30;
inline constexpr uint64_t kMinChunkBytes = 4096;

// Clients send a heartbeat at least this often; servers give up on a silent session no sooner
// than this (PROTOCOL.md, section 4.6).
inline constexpr std::chrono::milliseconds kMaxHeartbeatInterval{1000};
inline constexpr std::chrono::milliseconds kMinHeartbeatTimeout{2000};

// Ranges one Request carries at most (this implementation's choice; a server takes any number
// that fits kMaxServerMessageBytes).
inline constexpr int kMaxRangesPerRequest = 2000;

}  // namespace netloader
