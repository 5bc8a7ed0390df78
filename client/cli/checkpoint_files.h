#pragma once

// What netloader-client reads and writes on disk besides --model's headers: the files --output
// would replace, the written checkpoint read back and checked, and --delta-from's older copy.

#include <string>
#include <vector>

#include "netloader/client.h"
#include "netloader/safetensors.h"

namespace netloader::cli {

// The files this run writes into `dir` that are already there.
std::vector<std::string> ExistingOutputFiles(const std::string& dir,
                                             const CheckpointLayout& layout);

// Reads back the checkpoint this run wrote into `dir` (its index if it wrote one, else each shard
// file it wrote; nothing else in `dir`) and checks every tensor against the source's per-tensor
// digests. Errors: Unavailable (unreadable), ChecksumMismatch naming the tensors.
Status CheckWrittenCheckpoint(const std::string& dir, const CheckpointLayout& written,
                              const LoadStats& stats);

// --delta-from: the older copy (its tensors selected by `patterns`, if any), read into memory,
// which must have the layout `expected`: the same tensors (names, dtypes, shapes) in the same
// order. Errors: InvalidArgument naming the first tensor that differs, and the reader's.
Result<HostModel> ReadOlderCopy(const std::string& dir, const CheckpointLayout& expected,
                                const std::vector<std::string>& patterns);

}  // namespace netloader::cli
