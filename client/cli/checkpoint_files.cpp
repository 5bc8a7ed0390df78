#include "client/cli/checkpoint_files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>

namespace netloader::cli {

std::vector<std::string> ExistingOutputFiles(const std::string& dir,
                                             const CheckpointLayout& layout) {
  std::vector<std::string> existing;
  for (const std::string& name : CheckpointFileNames(layout)) {
    struct stat info {};
    if (lstat((dir + "/" + name).c_str(), &info) == 0) existing.push_back(dir + "/" + name);
  }
  return existing;
}

// The files are mapped read-only rather than read into memory, and each tensor's pages are
// dropped once it is checked: no second copy, and resident memory stays small.
Status CheckWrittenCheckpoint(const std::string& dir, const CheckpointLayout& written,
                              const LoadStats& stats) {
  CheckpointLayout layout;
  const std::vector<std::string> names = CheckpointFileNames(written);
  for (size_t i = 0; i < names.size(); ++i) {
    // An index names exactly the shards written with it; without one, read each shard.
    if (written.indexed && i + 1 < names.size()) continue;
    Result<CheckpointLayout> part = ReadCheckpointLayout(dir + "/" + names[i]);
    if (!part.ok()) return part.status();
    for (ShardLayout& shard : part->shards) layout.shards.push_back(std::move(shard));
  }
  std::map<std::string, uint64_t> digests;
  for (size_t i = 0; i < stats.tensor_names.size() && i < stats.tensor_digests.size(); ++i) {
    digests[stats.tensor_names[i]] = stats.tensor_digests[i];
  }
  std::vector<std::pair<void*, size_t>> mappings;
  Status status;
  size_t checked = 0;
  for (const ShardLayout& shard : layout.shards) {
    const int fd = open(shard.path.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat info {};
    void* base = MAP_FAILED;
    if (fd >= 0 && fstat(fd, &info) == 0 && info.st_size > 0) {
      base = mmap(nullptr, info.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    }
    if (fd >= 0) close(fd);
    if (base == MAP_FAILED) {
      status = Status(StatusCode::kUnavailable, "cannot read back " + shard.path);
      break;
    }
    mappings.emplace_back(base, info.st_size);
    for (const TensorSpec& t : shard.tensors) {
      auto digest = digests.find(t.name);
      if (digest == digests.end()) continue;  // not loaded by this run
      char* data = static_cast<char*>(base) + t.file_offset;
      LoadStats one;
      one.tensor_names = {t.name};
      one.tensor_digests = {digest->second};
      status = VerifyModel(ModelView{{{t.name, t.dtype, t.shape, data, t.size_bytes}}}, one);
      if (!status.ok()) break;
      ++checked;
      const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
      const uintptr_t begin = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
      (void)madvise(reinterpret_cast<void*>(begin),
                    reinterpret_cast<uintptr_t>(data) + t.size_bytes - begin, MADV_DONTNEED);
    }
    if (!status.ok()) break;
  }
  if (status.ok() && checked != digests.size()) {
    status = Status(StatusCode::kInvalidArgument, dir + " lacks " +
                                                      std::to_string(digests.size() - checked) +
                                                      " of the tensors the load filled");
  }
  for (auto& [base, size] : mappings) munmap(base, size);
  return status;
}

Result<HostModel> ReadOlderCopy(const std::string& dir, const CheckpointLayout& expected,
                                const std::vector<std::string>& patterns) {
  Result<CheckpointLayout> layout = ReadCheckpointLayout(dir);
  if (layout.ok() && !patterns.empty()) layout = SelectFromLayout(*layout, patterns);
  if (!layout.ok()) return layout.status().WithContext("--delta-from");
  auto flatten = [](const CheckpointLayout& l) {
    std::vector<const TensorSpec*> all;
    for (const ShardLayout& shard : l.shards) {
      for (const TensorSpec& t : shard.tensors) all.push_back(&t);
    }
    return all;
  };
  const std::vector<const TensorSpec*> want = flatten(expected), have = flatten(*layout);
  for (size_t i = 0; i < std::max(want.size(), have.size()); ++i) {
    if (i < want.size() && i < have.size() && want[i]->name == have[i]->name &&
        want[i]->dtype == have[i]->dtype && want[i]->shape == have[i]->shape) {
      continue;
    }
    return Status(StatusCode::kInvalidArgument,
                  "--delta-from " + dir + " has another layout than --model: tensor " +
                      std::to_string(i) + " is '" + (i < have.size() ? have[i]->name : "none") +
                      "' there and '" + (i < want.size() ? want[i]->name : "none") +
                      "' in --model (or its dtype or shape differs)");
  }
  Result<HostModel> older = HostModel::Load(*layout);
  if (!older.ok()) return older.status().WithContext("--delta-from " + dir);
  return older;
}

}  // namespace netloader::cli
