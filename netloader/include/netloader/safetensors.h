#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "netloader/export.h"
#include "netloader/status.h"
#include "netloader/tensor.h"

namespace netloader {

// A tensor as a safetensors header describes it.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t size_bytes = 0;
  uint64_t file_offset = 0;  // absolute byte offset of the tensor's data in its file
};

// One .safetensors file: its tensors in storage order: ascending data offsets (begin, then end),
// tensors at the same offsets (zero-byte ones) by name, bytewise (PROTOCOL.md, "Storage order").
struct ShardLayout {
  std::string path;
  std::map<std::string, std::string> metadata;  // the "__metadata__" block, kept verbatim
  std::vector<TensorSpec> tensors;
};

// A checkpoint: one file, or several shards tied together by model.safetensors.index.json.
// Storage order: shards in file-name order, tensors by data offset within each.
struct CheckpointLayout {
  std::vector<ShardLayout> shards;
  bool indexed = false;                    // came with an index.json
  std::string index_metadata_json = "{}";  // the index's "metadata" object, verbatim JSON

  NETLOADER_EXPORT size_t tensor_count() const;
  NETLOADER_EXPORT uint64_t total_bytes() const;
};

// What ReadCheckpointLayout asks of the files.
enum class LayoutRead {
  // Each file holds its tensors' data: offsets must lie within the file.
  kCheckpoint,
  // Only the layout matters (what a loading client needs; tensor data is never read): a file may
  // also be a *layout file*, the 8-byte length and JSON header of a safetensors file without the
  // data. Offsets are still checked against each other (sizes, overlaps), not against the file.
  kHeadersOnly,
};

// Reads only headers. `path` is a .safetensors file, a model.safetensors.index.json, or a
// directory holding either (an index if present, else every *.safetensors file in it).
// Malformed input gives InvalidArgument naming the file and what is wrong; missing input NotFound.
NETLOADER_EXPORT Result<CheckpointLayout> ReadCheckpointLayout(
    const std::string& path, LayoutRead read = LayoutRead::kCheckpoint);

// The tensors of `layout` whose names match any of `patterns` (TensorPatternMatches), in the same
// shards and order; shards left without tensors are dropped. What a partial load's client
// allocates and writes. Errors: InvalidArgument naming a pattern that is malformed or matches
// no tensor.
NETLOADER_EXPORT Result<CheckpointLayout> SelectFromLayout(
    const CheckpointLayout& layout, const std::vector<std::string>& patterns);

// Parses one file's header bytes (the JSON after the 8-byte length), given how many bytes of
// tensor data follow it (UINT64_MAX: unknown, do not check). Checks dtypes, shapes, offsets in
// bounds, sizes = shape x dtype and no overlaps. "__metadata__" may be an object of strings or
// null (no metadata). `path` only labels errors. Exposed for tests and fuzzing.
NETLOADER_EXPORT Result<ShardLayout> ParseSafetensorsHeader(const std::string& header,
                                                            uint64_t data_bytes,
                                                            const std::string& path);

// Tensor memory for a whole checkpoint, owned by this object, pre-faulted, 64-byte aligned per
// tensor. view() lists the tensors in storage order. Movable, not copyable; not thread-safe.
class NETLOADER_EXPORT HostModel {
 public:
  // Zero-filled buffers shaped like `layout` (a client's destination).
  static Result<HostModel> Allocate(const CheckpointLayout& layout);
  // Allocate, then read every tensor's bytes from the files (a server's source, or a disk load),
  // as ReadTensors does; the reads fault the fresh memory in as they copy.
  static Result<HostModel> Load(const CheckpointLayout& layout);

  HostModel(HostModel&&) noexcept;
  HostModel& operator=(HostModel&&) noexcept;
  ~HostModel();

  const CheckpointLayout& layout() const { return layout_; }
  const ModelView& view() const { return view_; }

 private:
  HostModel() = default;
  void Release();
  static Result<HostModel> Allocate(const CheckpointLayout& layout, bool populate);

  CheckpointLayout layout_;
  ModelView view_;
  void* memory_ = nullptr;
  size_t mapped_bytes_ = 0;
};

// Reads the bytes of every tensor of `layout` from its files into the tensor at the same place
// in `view` (storage order: the i-th tensor of the layout's shards into view.tensors[i]), which
// must have the same name and size. The one way netloader reads tensor data from disk (a
// HostModel, the Python binding's load_from_disk, the example engine's shards), on a few
// threads at once (two per core); interrupted reads are retried. Errors: InvalidArgument naming the
// first tensor that differs, NotFound (a file cannot be opened), Unavailable or InvalidArgument (a
// read fails, or a file ends early), each naming the file; `view`'s contents are then undefined.
NETLOADER_EXPORT Status ReadTensors(const CheckpointLayout& layout, const ModelView& view);

// Writes one safetensors file: 8-byte little-endian header length, a JSON header (metadata
// first, then tensors in the given order) padded with spaces to 8 bytes, then the data in order.
// Writes to a temporary name and renames, so a crash never leaves a half-written file.
NETLOADER_EXPORT Status WriteSafetensors(const std::string& path,
                                         const std::vector<TensorView>& tensors,
                                         const std::map<std::string, std::string>& metadata = {});

// The names of the files WriteCheckpoint writes for `layout`, in order: each shard's file name,
// then model.safetensors.index.json when the layout came with an index.
NETLOADER_EXPORT std::vector<std::string> CheckpointFileNames(const CheckpointLayout& layout);

// Writes `model` (whose tensors are in `layout`'s storage order) into directory `dir` with the
// same shard file names, metadata and, if the layout had one, a regenerated index.json. Files of
// those names already in `dir` are replaced; nothing else in `dir` is touched.
NETLOADER_EXPORT Status WriteCheckpoint(const std::string& dir, const CheckpointLayout& layout,
                                        const ModelView& model);

// A checkpoint written in place, as a load fills it (netloader-client --output): the files
// WriteCheckpoint would write, created in `dir` under temporary names (NAME.partial) at their
// full size with their headers, their tensor data mapped into memory (MAP_SHARED). A load into
// view() fills the files themselves, and the model is never held in this process's memory: the
// load drops each chunk's pages from it once verified (the kernel writes them back).
// Commit() writes everything back and gives each file its final name (the index last), so a
// file appears under its final name only complete. Left uncommitted (a failed or interrupted
// load), the temporary files stay: a later Create over the same layout resumes from them.
// Move-only. Destroyed once committed it unmaps the files; uncommitted (after a failed or
// cancelled load, into which MPI may still write late), the mappings stay until the process
// exits and only the files are closed and unlocked.
class NETLOADER_EXPORT MappedCheckpoint {
 public:
  static constexpr const char* kPartialSuffix = ".partial";

  // Creates (or finds) the temporary files and maps them. The disk space is reserved at once,
  // so a full disk fails here, naming the file. Errors: Unavailable naming the file,
  // InvalidArgument (a tensor name the format reserves).
  static Result<MappedCheckpoint> Create(const std::string& dir, const CheckpointLayout& layout);

  MappedCheckpoint(MappedCheckpoint&&) noexcept;
  MappedCheckpoint& operator=(MappedCheckpoint&&) noexcept;
  ~MappedCheckpoint();

  // The tensors, in storage order, in the mapped files.
  const ModelView& view() const { return view_; }
  // Whether every temporary file was there already, at its full size with the same header: an
  // interrupted pull's. Its bytes may be anything; a load then compares them with the source's
  // digests (ClientOptions::destination_filled) and pulls only what differs.
  bool resumed() const { return resumed_; }
  // Writes every file back (msync), renames each to its final name, then writes the index.
  // Errors: Unavailable naming the file.
  Status Commit();

 private:
  MappedCheckpoint() = default;
  void Unmap();

  std::string dir_;
  CheckpointLayout layout_;
  ModelView view_;
  std::vector<std::pair<void*, size_t>> mappings_;
  std::vector<int> locked_fds_;  // each file's, open (and flock'ed) until unmapped
  bool resumed_ = false;
  bool may_unmap_ = false;  // no load can still write into it: committed, or never loaded
};

}  // namespace netloader
