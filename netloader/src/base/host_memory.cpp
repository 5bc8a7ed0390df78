#include "netloader/src/base/host_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include "transfer/shared_memory.h"

namespace netloader {
namespace {

constexpr size_t kHugePage = 2 << 20;

}  // namespace

void* MapHostMemory(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* memory = transfer::MapSharedMemory(bytes, bytes < kHugePage ? page : kHugePage);
  if (memory == nullptr) return nullptr;
  if (bytes >= kHugePage) (void)madvise(memory, bytes, MADV_HUGEPAGE);  // where shmem THP is on
  // Fault every page in by writing to it, rather than with MADV_POPULATE_WRITE: that holds the
  // process's memory-map lock while it runs, so threads mapping memory meanwhile would wait for
  // it; a fault takes only the lock of its own mapping (Linux 6.4+).
  for (size_t at = 0; at < bytes; at += page) static_cast<volatile char*>(memory)[at] = 0;
  return memory;
}

bool PopulateForWrite(void* memory, size_t bytes) {
#ifndef MADV_POPULATE_WRITE
  constexpr int MADV_POPULATE_WRITE = 23;  // Linux 5.14
#endif
  return madvise(memory, bytes, MADV_POPULATE_WRITE) == 0;
}

void UnmapHostMemory(void* memory, size_t bytes) { transfer::UnmapSharedMemory(memory, bytes); }

}  // namespace netloader
