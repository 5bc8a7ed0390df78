#pragma once

// Memory that a data-plane helper process can map too: memfd regions, registered here by address
// so that a helper can be handed the file and move bytes straight into or out of it (DESIGN.md,
// "MPI in helper processes"). The helpers' staging rings live in such regions; so may tensors.

#include <cstddef>
#include <cstdint>
#include <optional>

namespace netloader::transfer {

// One shared region: the memfd behind [base, base + size) in this process.
struct SharedRegion {
  uint64_t id = 0;  // unique for the life of the process; never reused
  int fd = -1;      // owned by the registry; valid while the region is mapped
  const char* base = nullptr;
  size_t size = 0;
};

// Maps `bytes` of zeroed shared memory, aligned to `align` (a power of two, at least a page)
// and registered. Pages are not populated. Returns nullptr with errno set on failure.
void* MapSharedMemory(size_t bytes, size_t align);
// Unregisters and unmaps a region MapSharedMemory returned. Helpers that mapped it keep their
// mapping (and its pages) until they unmap it or exit.
void UnmapSharedMemory(void* memory, size_t bytes);

// The registered region holding all of [data, data + size), if one does. Thread-safe.
std::optional<SharedRegion> FindSharedRegion(const void* data, size_t size);

}  // namespace netloader::transfer
