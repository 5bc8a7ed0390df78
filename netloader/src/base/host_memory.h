#pragma once

#include <cstddef>

namespace netloader {

// Memory for tensors and staging rings, with every page present and writable before it is
// returned. Regions of 2 MiB or more are 2 MiB-aligned and asked for transparent huge pages
// (MADV_HUGEPAGE; the kernel may still use 4 KiB pages). On these VMs that is what makes fresh
// memory cheap: the first kernel write into a fresh 4 KiB page runs at ~0.7 GB/s, into a huge
// page at ~18 GB/s (DESIGN.md, "Fresh buffers"). The memory is a registered memfd that an MPI
// helper process can map (transfer/shared_memory.h) when `shared` is set, or when the kernel
// gives shared memory huge pages (shmem_enabled advise, always or within_size), where that
// costs nothing; else private anonymous memory, since shared 4 KiB pages cost a helper 70-75 ms
// per GiB to map (DESIGN.md, "MPI in helper processes"). Returns nullptr with errno set on
// failure. Release with UnmapHostMemory(memory, bytes). With `populate` false the pages are
// left to the first write: for memory that reads from files fill at once, which fault the
// pages in as they copy, on the reading threads, in one pass instead of two.
void* MapHostMemory(size_t bytes, bool shared = false, bool populate = true);
void UnmapHostMemory(void* memory, size_t bytes);

// Makes every page of [memory, memory + bytes) present and writable in one call
// (MADV_POPULATE_WRITE, Linux 5.14), contents untouched. Returns false where the kernel cannot.
bool PopulateForWrite(void* memory, size_t bytes);

// File pages mapped for a load to write into place (MappedCheckpoint): a load must not make
// them all present ahead of the data (PopulateForWrite), which would make the whole model
// resident. Registered by address; thread-safe.
void RegisterFileBacked(const void* memory, size_t bytes);
void UnregisterFileBacked(const void* memory);
bool IsFileBacked(const void* address);
// Drops this process's mappings of the pages of [memory, memory + bytes) (rounded out to whole
// pages) when they are registered file-backed memory: the pages stay in the page cache, dirty
// ones included, and a later touch maps them again, so it is safe at any time, also while a
// neighbouring chunk is being written into a page at the edge. Does nothing for other memory.
void DropFileBackedPages(const void* memory, size_t bytes);

}  // namespace netloader
