#include "netloader/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "netloader/src/base/host_memory.h"
#include "netloader/src/model/selection.h"

namespace netloader {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// The safetensors reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Tensor data is read in pieces of at most this, by ReadThreads() threads at once.
constexpr uint64_t kReadPiece = 64ull << 20;
constexpr size_t kTensorAlignment = 64;
const char kIndexName[] = "model.safetensors.index.json";

Status Invalid(const std::string& path, const std::string& what) {
  return Status(StatusCode::kInvalidArgument, path + ": " + what);
}

std::string ErrnoText() { return std::strerror(errno); }

// The status for an open() that just failed on `path`.
Status OpenFailed(const std::string& path) {
  return Status(errno == ENOENT ? StatusCode::kNotFound : StatusCode::kUnavailable,
                path + ": cannot open: " + ErrnoText());
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Reads exactly `size` bytes at `offset`, or fails naming the file.
// Threads that read a checkpoint: two per core, from 2 to 8. On a 2-core VM, 4 read 1 GiB from
// the page cache at 4.0-4.6 GB/s (2: 3.7-4.3, 1: 1.7-3.3) and from a cold disk at dd's pace
// (BENCHMARKS.md, "Disk loads"); more than 2 per core has not been measured anywhere.
size_t ReadThreads() { return std::clamp<size_t>(2 * std::thread::hardware_concurrency(), 2, 8); }

Status PreadAll(int fd, void* buffer, size_t size, uint64_t offset, const std::string& path) {
  char* out = static_cast<char*>(buffer);
  while (size > 0) {
    ssize_t n = pread(fd, out, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status(StatusCode::kUnavailable, path + ": read failed: " + ErrnoText());
    if (n == 0) return Invalid(path, "file ends early at byte " + std::to_string(offset));
    out += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* in = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, in, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status(StatusCode::kUnavailable, path + ": write failed: " + ErrnoText());
    in += n;
    size -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) close(fd_);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

Result<ShardLayout> ReadShardLayout(const std::string& path, LayoutRead mode) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return OpenFailed(path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return Status(StatusCode::kUnavailable, path + ": " + ErrnoText());
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) return Invalid(path, "shorter than the 8-byte header length");
  unsigned char prefix[8];
  Status read = PreadAll(fd.get(), prefix, 8, 0, path);
  if (!read.ok()) return read;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | prefix[i];
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path,
                   "header length " + std::to_string(header_len) + " exceeds the 100 MiB limit");
  }
  if (header_len > file_size - 8) {
    return Invalid(path, "header length " + std::to_string(header_len) +
                             " runs past the end of the file (" + std::to_string(file_size) +
                             " bytes)");
  }
  std::string header(header_len, '\0');
  read = PreadAll(fd.get(), header.data(), header_len, 8, path);
  if (!read.ok()) return read;
  const uint64_t data_bytes =
      mode == LayoutRead::kHeadersOnly ? UINT64_MAX : file_size - 8 - header_len;
  return ParseSafetensorsHeader(header, data_bytes, path);
}

Result<CheckpointLayout> ReadIndexed(const std::string& index_path, LayoutRead mode) {
  Fd fd(open(index_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return OpenFailed(index_path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) > kMaxHeaderBytes) {
    return Invalid(index_path, "unreadable or larger than 100 MiB");
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  Status read = PreadAll(fd.get(), text.data(), text.size(), 0, index_path);
  if (!read.ok()) return read;
  json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) return Invalid(index_path, "not a JSON object");
  auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return Invalid(index_path, "no \"weight_map\" object");
  }
  CheckpointLayout layout;
  layout.indexed = true;
  auto meta_it = index.find("metadata");
  if (meta_it != index.end() && meta_it->is_object()) layout.index_metadata_json = meta_it->dump();
  std::set<std::string> files;
  for (auto& [name, file] : map_it->items()) {
    if (!file.is_string())
      return Invalid(index_path, "weight_map[\"" + name + "\"] is not a string");
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f == "..") {
      return Invalid(index_path, "weight_map[\"" + name + "\"] names an unsafe file '" + f + "'");
    }
    files.insert(f);
  }
  if (files.empty()) return Invalid(index_path, "weight_map is empty");
  const std::string dir = DirName(index_path);
  size_t listed = 0;
  for (const std::string& file : files) {
    Result<ShardLayout> shard = ReadShardLayout(dir + "/" + file, mode);
    if (!shard.ok()) return shard.status();
    for (const TensorSpec& t : shard->tensors) {
      auto entry = map_it->find(t.name);
      if (entry == map_it->end() || entry->get<std::string>() != file) {
        return Invalid(index_path, "tensor '" + t.name + "' in " + file +
                                       " is not mapped to that file by weight_map");
      }
    }
    listed += shard->tensors.size();
    layout.shards.push_back(std::move(*shard));
  }
  if (listed != map_it->size()) {
    return Invalid(index_path, "weight_map lists " + std::to_string(map_it->size()) +
                                   " tensors but the shards hold " + std::to_string(listed));
  }
  return layout;
}

size_t AlignUp(size_t n) {
  return (n + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
}

}  // namespace

size_t CheckpointLayout::tensor_count() const {
  size_t n = 0;
  for (const ShardLayout& s : shards) n += s.tensors.size();
  return n;
}

uint64_t CheckpointLayout::total_bytes() const {
  uint64_t n = 0;
  for (const ShardLayout& s : shards) {
    for (const TensorSpec& t : s.tensors) n += t.size_bytes;
  }
  return n;
}

Result<CheckpointLayout> SelectFromLayout(const CheckpointLayout& layout,
                                          const std::vector<std::string>& patterns) {
  // The same selection a partial load makes (SelectIndices), kept in storage order.
  ModelView names;  // matching looks at names only: no data
  for (const ShardLayout& shard : layout.shards) {
    for (const TensorSpec& t : shard.tensors) {
      names.tensors.push_back({t.name, t.dtype, t.shape, nullptr, t.size_bytes});
    }
  }
  Result<std::vector<size_t>> indices = SelectIndices(names, patterns);
  if (!indices.ok()) return indices.status();
  std::vector<bool> taken(names.tensors.size(), false);
  for (size_t i : *indices) taken[i] = true;
  CheckpointLayout selected = layout;
  selected.shards.clear();
  size_t index = 0;
  for (const ShardLayout& shard : layout.shards) {
    ShardLayout kept = shard;
    kept.tensors.clear();
    for (const TensorSpec& t : shard.tensors) {
      if (taken[index++]) kept.tensors.push_back(t);
    }
    if (!kept.tensors.empty()) selected.shards.push_back(std::move(kept));
  }
  return selected;
}

Result<ShardLayout> ParseSafetensorsHeader(const std::string& header, uint64_t data_bytes,
                                           const std::string& path) {
  json doc = json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Invalid(path, "header is not valid JSON");
  if (!doc.is_object()) return Invalid(path, "header is not a JSON object");
  const uint64_t data_start = 8 + header.size();
  ShardLayout shard;
  shard.path = path;
  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  for (auto& [name, entry] : doc.items()) {
    if (name == "__metadata__") {
      if (entry.is_null()) continue;  // MLX writes null for "no metadata"; so reads the reference
      if (!entry.is_object()) return Invalid(path, "__metadata__ is not an object or null");
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string())
          return Invalid(path, "__metadata__[\"" + key + "\"] is not a string");
        shard.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string label = "tensor '" + name + "'";
    if (name.empty()) return Invalid(path, "a tensor has an empty name");
    if (!entry.is_object()) return Invalid(path, label + " is not an object");
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return Invalid(path, label + ": missing or non-string dtype");
    }
    std::optional<DType> dtype = ParseDType(dtype_it->get<std::string>());
    if (!dtype)
      return Invalid(path, label + ": unknown dtype '" + dtype_it->get<std::string>() + "'");
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return Invalid(path, label + ": missing or non-array shape");
    }
    TensorSpec spec;
    spec.name = name;
    spec.dtype = *dtype;
    for (const json& dim : *shape_it) {
      if (!dim.is_number_integer() ||
          (dim.is_number_integer() && !dim.is_number_unsigned() && dim.get<int64_t>() < 0)) {
        return Invalid(path, label + ": shape entries must be non-negative integers");
      }
      if (dim.is_number_unsigned() && dim.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return Invalid(path, label + ": dimension too large");
      }
      spec.shape.push_back(dim.get<int64_t>());
    }
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
      return Invalid(path, label + ": data_offsets must be two non-negative integers");
    }
    const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
    const uint64_t end = (*offsets_it)[1].get<uint64_t>();
    if (begin > end) return Invalid(path, label + ": data_offsets begin > end");
    if (end > data_bytes) {
      return Invalid(path, label + ": data_offsets [" + std::to_string(begin) + ", " +
                               std::to_string(end) + ") run past the " +
                               std::to_string(data_bytes) + " data bytes in the file");
    }
    Result<uint64_t> count = ElementCount(spec.shape);
    if (!count.ok()) return Invalid(path, label + ": " + count.status().message());
    const uint64_t elem = DTypeSize(spec.dtype);
    if (*count > UINT64_MAX / elem || *count * elem != end - begin) {
      return Invalid(path, label + ": " + std::to_string(end - begin) +
                               " bytes do not match shape x dtype (" + std::to_string(*count) +
                               " x " + std::to_string(elem) + ")");
    }
    spec.size_bytes = end - begin;
    spec.file_offset = data_start + begin;
    ranges.push_back({begin, end, shard.tensors.size()});
    shard.tensors.push_back(std::move(spec));
  }
  // Storage order is data order. Zero-byte tensors sort by offset too and overlap nothing; those
  // at the same offset go by name, so every reader lists them in one order (PROTOCOL.md).
  std::sort(ranges.begin(), ranges.end(), [&](const Range& a, const Range& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return shard.tensors[a.index].name < shard.tensors[b.index].name;
  });
  uint64_t covered_to = 0;
  const TensorSpec* previous = nullptr;
  std::vector<TensorSpec> ordered;
  ordered.reserve(ranges.size());
  for (const Range& r : ranges) {
    const TensorSpec& t = shard.tensors[r.index];
    if (r.begin < covered_to && r.end > r.begin) {
      return Invalid(path, "tensor '" + t.name + "' overlaps tensor '" + previous->name + "'");
    }
    if (r.end > covered_to) {
      covered_to = r.end;
      previous = &t;
    }
    ordered.push_back(t);
  }
  shard.tensors = std::move(ordered);
  return shard;
}

Result<CheckpointLayout> ReadCheckpointLayout(const std::string& path, LayoutRead mode) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return Status(StatusCode::kNotFound, path + ": no such file or directory");
  }
  if (S_ISDIR(st.st_mode)) {
    const std::string index = path + "/" + kIndexName;
    if (access(index.c_str(), F_OK) == 0) return ReadIndexed(index, mode);
    std::vector<std::string> files;
    if (DIR* dir = opendir(path.c_str())) {
      while (dirent* e = readdir(dir)) {
        std::string name = e->d_name;
        if (EndsWith(name, ".safetensors")) files.push_back(path + "/" + name);
      }
      closedir(dir);
    }
    if (files.empty()) {
      return Status(StatusCode::kNotFound, path + ": no *.safetensors files and no " + kIndexName);
    }
    std::sort(files.begin(), files.end());
    CheckpointLayout layout;
    std::set<std::string> names;
    for (const std::string& file : files) {
      Result<ShardLayout> shard = ReadShardLayout(file, mode);
      if (!shard.ok()) return shard.status();
      for (const TensorSpec& t : shard->tensors) {
        if (!names.insert(t.name).second) {
          return Invalid(file, "tensor '" + t.name + "' also appears in another file");
        }
      }
      layout.shards.push_back(std::move(*shard));
    }
    return layout;
  }
  if (EndsWith(path, ".json")) return ReadIndexed(path, mode);
  Result<ShardLayout> shard = ReadShardLayout(path, mode);
  if (!shard.ok()) return shard.status();
  CheckpointLayout layout;
  layout.shards.push_back(std::move(*shard));
  return layout;
}

HostModel::HostModel(HostModel&& other) noexcept { *this = std::move(other); }

HostModel& HostModel::operator=(HostModel&& other) noexcept {
  if (this != &other) {
    Release();
    layout_ = std::move(other.layout_);
    view_ = std::move(other.view_);
    memory_ = std::exchange(other.memory_, nullptr);
    mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
  }
  return *this;
}

HostModel::~HostModel() { Release(); }

void HostModel::Release() {
  UnmapHostMemory(memory_, mapped_bytes_);
  memory_ = nullptr;
  mapped_bytes_ = 0;
}

Result<HostModel> HostModel::Allocate(const CheckpointLayout& layout) {
  return Allocate(layout, /*populate=*/true);
}

Result<HostModel> HostModel::Allocate(const CheckpointLayout& layout, bool populate) {
  HostModel model;
  model.layout_ = layout;
  size_t bytes = 0;
  for (const ShardLayout& shard : layout.shards) {
    for (const TensorSpec& t : shard.tensors) bytes += AlignUp(t.size_bytes);
  }
  if (bytes > 0) {
    // Huge pages where possible; present and writable unless a read fills them at once.
    void* memory = MapHostMemory(bytes, /*shared=*/false, populate);
    if (memory == nullptr) {
      return Status(StatusCode::kUnavailable,
                    "cannot allocate " + std::to_string(bytes) + " bytes: " + ErrnoText());
    }
    model.memory_ = memory;
    model.mapped_bytes_ = bytes;
  }
  char* at = static_cast<char*>(model.memory_);
  for (const ShardLayout& shard : layout.shards) {
    for (const TensorSpec& t : shard.tensors) {
      model.view_.tensors.push_back(
          {t.name, t.dtype, t.shape, t.size_bytes ? at : nullptr, t.size_bytes});
      at += AlignUp(t.size_bytes);
    }
  }
  return model;
}

Result<HostModel> HostModel::Load(const CheckpointLayout& layout) {
  Result<HostModel> model = Allocate(layout, /*populate=*/false);
  if (!model.ok()) return model;
  Status read = ReadTensors(layout, model->view_);
  if (!read.ok()) return read;
  return model;
}

Status ReadTensors(const CheckpointLayout& layout, const ModelView& view) {
  // Every tensor, in pieces of at most kReadPiece, handed out in file order to ReadThreads()
  // threads (this one included). From the page cache a read is a copy, which more cores do
  // faster; from a disk, several reads in flight keep it busy (BENCHMARKS.md, "Disk loads").
  struct Piece {
    int fd;
    const std::string* path;
    char* to;
    size_t size;
    uint64_t offset;
  };
  std::vector<Fd> files;
  std::vector<Piece> pieces;
  size_t index = 0;
  for (const ShardLayout& shard : layout.shards) {
    files.emplace_back(open(shard.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (files.back().get() < 0) return OpenFailed(shard.path);
    for (const TensorSpec& t : shard.tensors) {
      const TensorView* dest = index < view.tensors.size() ? &view.tensors[index] : nullptr;
      ++index;
      if (dest == nullptr || dest->name != t.name || dest->size_bytes != t.size_bytes) {
        return Status(
            StatusCode::kInvalidArgument,
            "tensor '" + t.name + "' of " + shard.path + " is not the next tensor given (" +
                (dest ? "'" + dest->name + "'" : std::string("none")) + ") or has another size");
      }
      for (uint64_t at = 0; at < t.size_bytes; at += kReadPiece) {  // none for 0 bytes
        pieces.push_back({files.back().get(), &shard.path, static_cast<char*>(dest->data) + at,
                          static_cast<size_t>(std::min<uint64_t>(kReadPiece, t.size_bytes - at)),
                          t.file_offset + at});
      }
    }
  }
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status failed;  // the first failure, guarded by mu
  auto read = [&] {
    for (size_t i = next++; i < pieces.size(); i = next++) {
      const Piece& p = pieces[i];
      Status status = PreadAll(p.fd, p.to, p.size, p.offset, *p.path);
      if (!status.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (failed.ok()) failed = status;
        next = pieces.size();  // the others stop after their current piece
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  const size_t extra = std::min<size_t>(ReadThreads(), pieces.size()) - (pieces.empty() ? 0 : 1);
  try {
    for (size_t t = 0; t < extra; ++t) threads.emplace_back(read);
  } catch (const std::system_error&) {
    // Fewer threads than asked for: those started and this one share the pieces.
  }
  read();
  for (std::thread& t : threads) t.join();
  return failed;
}

namespace {

// What precedes the data of a safetensors file of `tensors` (their data back to back, in order):
// the 8-byte little-endian length, then the JSON header (metadata first) padded with spaces to
// 8 bytes, as the reference writer does. Errors: InvalidArgument naming `path`.
Result<std::string> SafetensorsHead(const std::string& path, const std::vector<TensorView>& tensors,
                                    const std::map<std::string, std::string>& metadata) {
  ordered_json header = ordered_json::object();
  std::set<std::string> names;  // ordered_json lookups are linear; keep a set for duplicates
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return Status(StatusCode::kInvalidArgument,
                    path + ": duplicate or reserved tensor name '" + t.name + "'");
    }
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.size_bytes}}};
    offset += t.size_bytes;
  }
  std::string text = header.dump();
  // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string head(8, '\0');
  for (int i = 0; i < 8; ++i) head[i] = static_cast<char>(uint64_t{text.size()} >> (8 * i));
  return head + text;
}

}  // namespace

Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  Result<std::string> head = SafetensorsHead(path, tensors, metadata);
  if (!head.ok()) return head.status();
  const std::string temp = path + ".tmp";
  {
    Fd fd(open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) {
      return Status(StatusCode::kUnavailable, temp + ": cannot create: " + ErrnoText());
    }
    Status status = WriteAll(fd.get(), head->data(), head->size(), temp);
    for (const TensorView& t : tensors) {
      if (!status.ok()) break;
      status = WriteAll(fd.get(), t.data, t.size_bytes, temp);
    }
    if (!status.ok()) {
      unlink(temp.c_str());
      return status;
    }
  }
  if (rename(temp.c_str(), path.c_str()) != 0) {
    unlink(temp.c_str());
    return Status(StatusCode::kUnavailable, path + ": rename failed: " + ErrnoText());
  }
  return Status::Ok();
}

std::vector<std::string> CheckpointFileNames(const CheckpointLayout& layout) {
  std::vector<std::string> names;
  for (const ShardLayout& shard : layout.shards) names.push_back(BaseName(shard.path));
  if (layout.indexed) names.push_back(kIndexName);
  return names;
}

namespace {

// The index.json of `layout` in `dir`, regenerated (none when the layout had none): under a
// temporary name, renamed into place.
Status WriteIndex(const std::string& dir, const CheckpointLayout& layout) {
  if (!layout.indexed) return Status::Ok();
  const std::vector<std::string> files = CheckpointFileNames(layout);
  ordered_json weight_map = ordered_json::object();
  for (size_t s = 0; s < layout.shards.size(); ++s) {
    for (const TensorSpec& t : layout.shards[s].tensors) weight_map[t.name] = files[s];
  }
  ordered_json index_doc = ordered_json::object();
  ordered_json meta = ordered_json::parse(layout.index_metadata_json, nullptr, false);
  if (!meta.is_object()) meta = ordered_json::object();
  meta["total_size"] = layout.total_bytes();
  index_doc["metadata"] = meta;
  index_doc["weight_map"] = weight_map;
  const std::string text = index_doc.dump(2) + "\n";
  const std::string path = dir + "/" + kIndexName;
  const std::string temp = path + ".tmp";
  Fd fd(open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0)
    return Status(StatusCode::kUnavailable, temp + ": cannot create: " + ErrnoText());
  Status status = WriteAll(fd.get(), text.data(), text.size(), temp);
  if (status.ok() && rename(temp.c_str(), path.c_str()) != 0) {
    status = Status(StatusCode::kUnavailable, path + ": rename failed: " + ErrnoText());
  }
  if (!status.ok()) unlink(temp.c_str());
  return status;
}

}  // namespace

Status WriteCheckpoint(const std::string& dir, const CheckpointLayout& layout,
                       const ModelView& model) {
  if (model.tensors.size() != layout.tensor_count()) {
    return Status(StatusCode::kInvalidArgument,
                  "model has " + std::to_string(model.tensors.size()) + " tensors, layout has " +
                      std::to_string(layout.tensor_count()));
  }
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return Status(StatusCode::kUnavailable, dir + ": cannot create: " + error.message());
  const std::vector<std::string> files = CheckpointFileNames(layout);
  size_t index = 0;
  for (size_t s = 0; s < layout.shards.size(); ++s) {
    const ShardLayout& shard = layout.shards[s];
    std::vector<TensorView> tensors(model.tensors.begin() + index,
                                    model.tensors.begin() + index + shard.tensors.size());
    index += shard.tensors.size();
    Status status = WriteSafetensors(dir + "/" + files[s], tensors, shard.metadata);
    if (!status.ok()) return status;
  }
  return WriteIndex(dir, layout);
}

Result<MappedCheckpoint> MappedCheckpoint::Create(const std::string& dir,
                                                  const CheckpointLayout& layout) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return Status(StatusCode::kUnavailable, dir + ": cannot create: " + error.message());
  MappedCheckpoint out;
  // Failing here, nothing was loaded into the files yet: what was mapped may be unmapped.
  struct UnmapOnFailure {
    MappedCheckpoint* files;
    ~UnmapOnFailure() {
      if (files != nullptr) files->may_unmap_ = true;
    }
  } unmap_on_failure{&out};
  out.dir_ = dir;
  out.layout_ = layout;
  out.resumed_ = true;
  const std::vector<std::string> names = CheckpointFileNames(layout);
  for (size_t s = 0; s < layout.shards.size(); ++s) {
    const ShardLayout& shard = layout.shards[s];
    std::vector<TensorView> tensors;
    uint64_t data_bytes = 0;
    for (const TensorSpec& t : shard.tensors) {
      tensors.push_back({t.name, t.dtype, t.shape, nullptr, t.size_bytes});
      data_bytes += t.size_bytes;
    }
    const std::string path = dir + "/" + names[s] + kPartialSuffix;
    Result<std::string> head = SafetensorsHead(path, tensors, shard.metadata);
    if (!head.ok()) return head.status();
    const uint64_t size = head->size() + data_bytes;
    // A file left by an interrupted run of the same layout is resumed: same size, same head.
    // Locked first: a second pull into the same directory must not truncate files the first
    // has mapped (its writes would then raise SIGBUS).
    Fd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (fd.get() < 0) {
      return Status(StatusCode::kUnavailable, path + ": cannot create: " + ErrnoText());
    }
    if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      return Status(StatusCode::kUnavailable,
                    path + ": another process is writing it (" + ErrnoText() + ")");
    }
    bool same = false;
    struct stat info {};
    if (fd.get() >= 0 && fstat(fd.get(), &info) == 0 &&
        static_cast<uint64_t>(info.st_size) == size) {
      std::string old(head->size(), '\0');
      same = PreadAll(fd.get(), old.data(), old.size(), 0, path).ok() && old == *head;
    }
    if (!same) {
      out.resumed_ = false;
      if (ftruncate(fd.get(), 0) != 0) {
        return Status(StatusCode::kUnavailable, path + ": cannot truncate: " + ErrnoText());
      }
      Status written = WriteAll(fd.get(), head->data(), head->size(), path);
      if (!written.ok()) return written;
    }
    // The space, reserved now: a full disk fails here, naming the file, not later in a fault.
    if (const int rc = posix_fallocate(fd.get(), 0, static_cast<off_t>(size)); rc != 0) {
      return Status(StatusCode::kUnavailable, path + ": cannot reserve " + std::to_string(size) +
                                                  " bytes: " + std::strerror(rc));
    }
    void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (base == MAP_FAILED) {
      return Status(StatusCode::kUnavailable, path + ": cannot map: " + ErrnoText());
    }
    out.mappings_.push_back({base, size});
    out.locked_fds_.push_back(fd.release());
    RegisterFileBacked(base, size);
    char* at = static_cast<char*>(base) + head->size();
    for (const TensorView& t : tensors) {
      out.view_.tensors.push_back(
          {t.name, t.dtype, t.shape, t.size_bytes ? at : nullptr, t.size_bytes});
      at += t.size_bytes;
    }
  }
  if (layout.shards.empty()) out.resumed_ = false;
  unmap_on_failure.files = nullptr;
  return out;
}

MappedCheckpoint::MappedCheckpoint(MappedCheckpoint&& other) noexcept { *this = std::move(other); }

MappedCheckpoint& MappedCheckpoint::operator=(MappedCheckpoint&& other) noexcept {
  if (this != &other) {
    Unmap();
    dir_ = std::move(other.dir_);
    layout_ = std::move(other.layout_);
    view_ = std::move(other.view_);
    mappings_ = std::exchange(other.mappings_, {});
    may_unmap_ = other.may_unmap_;
    locked_fds_ = std::exchange(other.locked_fds_, {});
    resumed_ = other.resumed_;
  }
  return *this;
}

MappedCheckpoint::~MappedCheckpoint() { Unmap(); }

void MappedCheckpoint::Unmap() {
  for (const auto& [base, size] : mappings_) {
    // A load that failed or was cancelled may leave a receive posted that MPI completes later
    // (at the latest while finalizing): until committed, the mappings stay for the process's
    // life, as a failed stream's staging ring does. What lands there is in a .partial file,
    // which a resumed pull checks against the digests anyway.
    if (!may_unmap_) continue;
    UnregisterFileBacked(base);
    munmap(base, size);
  }
  mappings_.clear();
  for (int fd : locked_fds_) close(fd);
  locked_fds_.clear();
}

Status MappedCheckpoint::Commit() {
  const std::vector<std::string> names = CheckpointFileNames(layout_);
  for (size_t s = 0; s < mappings_.size(); ++s) {
    const auto& [base, size] = mappings_[s];
    const std::string path = dir_ + "/" + names[s];
    if (msync(base, size, MS_SYNC) != 0) {
      return Status(StatusCode::kUnavailable,
                    path + kPartialSuffix + ": cannot write back: " + ErrnoText());
    }
    if (rename((path + kPartialSuffix).c_str(), path.c_str()) != 0) {
      return Status(StatusCode::kUnavailable, path + ": rename failed: " + ErrnoText());
    }
  }
  Status index = WriteIndex(dir_, layout_);
  may_unmap_ = index.ok();
  return index;
}

}  // namespace netloader
