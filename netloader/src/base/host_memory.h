#pragma once

#include <cstddef>

namespace netloader {

// Shared memory (a memfd, transfer/shared_memory.h, so that a data-plane helper process can map
// it) for tensors and staging rings, with every page present and writable before it is
// returned. Regions of 2 MiB or more are 2 MiB-aligned and asked for transparent huge pages
// (MADV_HUGEPAGE; used only where the kernel enables them for shared memory). Fresh shared
// memory faults in about as fast as private 4 KiB pages (DESIGN.md, "Fleet facts"). Returns
// nullptr with errno set on failure. Release with UnmapHostMemory(memory, bytes).
void* MapHostMemory(size_t bytes);
void UnmapHostMemory(void* memory, size_t bytes);

// Makes every page of [memory, memory + bytes) present and writable in one call
// (MADV_POPULATE_WRITE, Linux 5.14), contents untouched. Returns false where the kernel cannot.
bool PopulateForWrite(void* memory, size_t bytes);

}  // namespace netloader
