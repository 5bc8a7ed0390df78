#include "netloader/src/base/host_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <string>

#include "transfer/shared_memory.h"

namespace netloader {
namespace {

constexpr size_t kHugePage = 2 << 20;

// Maps `bytes` starting on a `align` boundary: over-maps, then unmaps the ends.
void* MapAligned(size_t bytes, size_t align) {
  const size_t padded = bytes + align;
  void* raw = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + align - 1) & ~(align - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = aligned + bytes;
  if (start + padded > end) munmap(reinterpret_cast<void*>(end), start + padded - end);
  return reinterpret_cast<void*>(aligned);
}

// Whether the kernel gives shared memory transparent huge pages when asked (MADV_HUGEPAGE).
bool SharedHugePages() {
  static const bool available = [] {
    std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    std::string modes;
    std::getline(in, modes);
    return modes.find("[always]") != std::string::npos ||
           modes.find("[within_size]") != std::string::npos ||
           modes.find("[advise]") != std::string::npos;
  }();
  return available;
}

}  // namespace

void* MapHostMemory(size_t bytes, bool shared, bool populate) {
  if (bytes == 0) return nullptr;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const bool huge = bytes >= kHugePage;
  void* memory = nullptr;
  if (shared || (huge && SharedHugePages())) {
    memory = transfer::MapSharedMemory(bytes, huge ? kHugePage : page);
  } else if (!huge) {
    memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);
    return memory == MAP_FAILED ? nullptr : memory;
  } else {
    memory = MapAligned(bytes, kHugePage);
  }
  if (memory == nullptr) return nullptr;
  if (huge) (void)madvise(memory, bytes, MADV_HUGEPAGE);  // best effort: THP may be off
  if (!populate) return memory;
  // Fault every page in by writing to it, rather than with MADV_POPULATE_WRITE: that holds the
  // process's memory-map lock while it runs, so MPI starting on another thread meanwhile (which
  // maps and protects memory thousands of times) would wait for it; a fault takes only the
  // lock of its own mapping (Linux 6.4+). With huge pages one write in 512 faults and it is as
  // fast; without, measured 0.39 s per GiB against 0.30.
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

namespace {

struct FileBacked {
  std::mutex mu;
  std::map<uintptr_t, uintptr_t> regions;  // begin -> end, guarded by mu
};

FileBacked& FileBackedRegions() {
  static FileBacked* regions = new FileBacked;  // never destroyed: used until exit
  return *regions;
}

}  // namespace

void RegisterFileBacked(const void* memory, size_t bytes) {
  FileBacked& f = FileBackedRegions();
  std::lock_guard<std::mutex> lock(f.mu);
  f.regions[reinterpret_cast<uintptr_t>(memory)] = reinterpret_cast<uintptr_t>(memory) + bytes;
}

void UnregisterFileBacked(const void* memory) {
  FileBacked& f = FileBackedRegions();
  std::lock_guard<std::mutex> lock(f.mu);
  f.regions.erase(reinterpret_cast<uintptr_t>(memory));
}

void DropFileBackedPages(const void* memory, size_t bytes) {
  if (bytes == 0 || !IsFileBacked(memory)) return;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(memory) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(memory) + bytes + page - 1) & ~(page - 1);
  (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

bool IsFileBacked(const void* address) {
  const auto at = reinterpret_cast<uintptr_t>(address);
  FileBacked& f = FileBackedRegions();
  std::lock_guard<std::mutex> lock(f.mu);
  auto it = f.regions.upper_bound(at);
  return it != f.regions.begin() && at < std::prev(it)->second;
}

}  // namespace netloader
