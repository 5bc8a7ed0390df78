#pragma once

#include <string>
#include <vector>

#include "netloader/tensor.h"

namespace netloader {

// A partial load's stream (PROTOCOL.md, section 4.2.1): the indices of `model`'s tensors that
// match any of `patterns` (TensorPatternMatches; assumed valid), in name order. A pattern that
// matches nothing selects nothing; its index is appended to `unmatched` when given.
std::vector<size_t> MatchTensors(const ModelView& model, const std::vector<std::string>& patterns,
                                 std::vector<size_t>* unmatched = nullptr);

// What a client selects (SelectTensors, SelectFromLayout): MatchTensors after checking every
// pattern. Errors: InvalidArgument naming a pattern that is malformed or matches no tensor.
Result<std::vector<size_t>> SelectIndices(const ModelView& model,
                                          const std::vector<std::string>& patterns);

}  // namespace netloader
