#pragma once

// The fan-out row's "shared storage": what K instances reading one NFS server see.

#include "tests/bench/roles.h"

namespace netloader::bench {

// storage-serve: a host that streams the checkpoint's files, whole and in order, over plain TCP
// to each reader that connects, from the page cache (sendfile), until SIGTERM. Listens on
// --listen (an IPv4 address), a free port, and writes "ADDRESS:PORT" to --endpoint-file.
int RoleStorageServe(const RoleArgs& args);

// storage-read: every byte of the checkpoint's files from --source ("ADDRESS:PORT") into fresh
// memory, as a disk loader reads its files (no checksums). Says "ready" on stderr once its
// memory is faulted in, starts once --start-file exists, and prints the seconds from then.
int RoleStorageRead(const RoleArgs& args);

}  // namespace netloader::bench
