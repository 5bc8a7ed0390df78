#pragma once

#include <cstddef>

namespace netloader {

// Private anonymous memory for tensors and staging rings, with every page present and writable
// before it is returned. Regions of 2 MiB or more are 2 MiB-aligned and asked for transparent
// huge pages (MADV_HUGEPAGE; the kernel may still use 4 KiB pages). On these VMs that is what
// makes fresh memory cheap: the first kernel write into a fresh 4 KiB page runs at ~0.7 GB/s,
// into a huge page at ~18 GB/s (DESIGN.md, "Fresh buffers"). Returns nullptr with errno set on
// failure. Release with UnmapHostMemory(memory, bytes).
void* MapHostMemory(size_t bytes);
void UnmapHostMemory(void* memory, size_t bytes);

// Makes every page of [memory, memory + bytes) present and writable in one call
// (MADV_POPULATE_WRITE, Linux 5.14), contents untouched. Returns false where the kernel cannot.
bool PopulateForWrite(void* memory, size_t bytes);

}  // namespace netloader
