#pragma once

// Bare MPI, the ceiling netloader is measured against: the same rendezvous, pml, chunk size and
// window as netloader, and nothing else (no handshake, no checksums). The sender holds the
// checkpoint's bytes read from disk (warm, as a netloader server's are); each receiver gets
// fresh buffers exactly as a netloader client does.

#include "tests/bench/roles.h"

namespace netloader::bench {

// raw-send: streams the model's tensor bytes to --peers receivers, one MPI port each, its name
// written to --port-file.0, .1, ...; prints its CPU seconds and peak RSS.
int RoleRawSend(const RoleArgs& args);

// raw-recv: connects to the port named in --port-file and receives the model's tensor bytes;
// prints seconds, bytes, the connect time (not part of the row) and its CPU seconds.
int RoleRawRecv(const RoleArgs& args);

}  // namespace netloader::bench
