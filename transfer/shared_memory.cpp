#include "transfer/shared_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <mutex>
#include <shared_mutex>

namespace netloader::transfer {
namespace {

struct Registry {
  std::shared_mutex mu;                      // guards the fields below
  std::map<uintptr_t, SharedRegion> by_end;  // keyed by one past the region's last byte
  uint64_t next_id = 1;
};

Registry& GetRegistry() {
  static Registry* registry = new Registry();  // outlives static destructors
  return *registry;
}

}  // namespace

void* MapSharedMemory(size_t bytes, size_t align) {
  const int fd = memfd_create("netloader", MFD_CLOEXEC);
  if (fd < 0) return nullptr;
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int saved = errno;
    close(fd);
    errno = saved;
    return nullptr;
  }
  // Reserve an aligned range, then map the file over it.
  const size_t padded = bytes + align;
  void* raw = mmap(nullptr, padded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    const int saved = errno;
    close(fd);
    errno = saved;
    return nullptr;
  }
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + align - 1) & ~(align - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = aligned + bytes;
  if (start + padded > end) munmap(reinterpret_cast<void*>(end), start + padded - end);
  void* memory = mmap(reinterpret_cast<void*>(aligned), bytes, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_FIXED, fd, 0);
  if (memory == MAP_FAILED) {
    const int saved = errno;
    munmap(reinterpret_cast<void*>(aligned), bytes);
    close(fd);
    errno = saved;
    return nullptr;
  }
  Registry& registry = GetRegistry();
  std::unique_lock<std::shared_mutex> lock(registry.mu);
  registry.by_end[end] = SharedRegion{registry.next_id++, fd, static_cast<char*>(memory), bytes};
  return memory;
}

void UnmapSharedMemory(void* memory, size_t bytes) {
  if (memory == nullptr) return;
  Registry& registry = GetRegistry();
  {
    std::unique_lock<std::shared_mutex> lock(registry.mu);
    auto it = registry.by_end.find(reinterpret_cast<uintptr_t>(memory) + bytes);
    if (it != registry.by_end.end()) {
      close(it->second.fd);
      registry.by_end.erase(it);
    }
  }
  munmap(memory, bytes);
}

std::optional<SharedRegion> FindSharedRegion(const void* data, size_t size) {
  const auto begin = reinterpret_cast<uintptr_t>(data);
  Registry& registry = GetRegistry();
  std::shared_lock<std::shared_mutex> lock(registry.mu);
  auto it = registry.by_end.upper_bound(begin);  // the first region ending after `begin`
  if (it == registry.by_end.end()) return std::nullopt;
  const SharedRegion& region = it->second;
  const auto base = reinterpret_cast<uintptr_t>(region.base);
  if (begin < base || begin + size > it->first) return std::nullopt;
  return region;
}

}  // namespace netloader::transfer
