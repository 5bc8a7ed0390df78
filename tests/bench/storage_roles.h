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

// cold-start: an engine instance of a cold burst. Allocates the model, starts a relay on
// --listen publishing in --registry, says "ready", and once --start-file exists loads through
// the registry with no source: if it is the instance that claimed the storage read it reads
// every file from --source (the storage host) into its tensors and serves them (MarkLoaded);
// otherwise it loads from the burst. Prints its seconds and where its weights came from, then
// serves until SIGTERM.
int RoleColdStart(const RoleArgs& args);

}  // namespace netloader::bench
