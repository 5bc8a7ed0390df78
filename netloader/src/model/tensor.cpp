#include "netloader/tensor.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "netloader/src/model/selection.h"

namespace netloader {

Result<uint64_t> ElementCount(const std::vector<int64_t>& shape) {
  uint64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return Status(StatusCode::kInvalidArgument, "negative dimension " + std::to_string(dim));
    }
    if (dim != 0 && count > UINT64_MAX / static_cast<uint64_t>(dim)) {
      return Status(StatusCode::kInvalidArgument, "shape overflows 64 bits");
    }
    count *= static_cast<uint64_t>(dim);
  }
  return count;
}

Status ValidateModelView(const ModelView& model) {
  std::unordered_set<std::string> names;
  for (size_t i = 0; i < model.tensors.size(); ++i) {
    const TensorView& t = model.tensors[i];
    const std::string label = "tensor " + std::to_string(i) + " '" + t.name + "'";
    if (t.name.empty()) return Status(StatusCode::kInvalidArgument, label + ": empty name");
    if (!names.insert(t.name).second) {
      return Status(StatusCode::kInvalidArgument, label + ": duplicate name");
    }
    Result<uint64_t> count = ElementCount(t.shape);
    if (!count.ok()) return count.status().WithContext(label);
    const uint64_t size = *count * DTypeSize(t.dtype);
    if (*count != 0 && size / *count != DTypeSize(t.dtype)) {
      return Status(StatusCode::kInvalidArgument, label + ": size overflows 64 bits");
    }
    if (size != t.size_bytes) {
      return Status(StatusCode::kInvalidArgument,
                    label + ": size_bytes " + std::to_string(t.size_bytes) +
                        " does not match shape x dtype = " + std::to_string(size));
    }
    if (t.size_bytes > 0 && t.data == nullptr) {
      return Status(StatusCode::kInvalidArgument, label + ": data is null");
    }
  }
  return Status::Ok();
}

Status ValidatePartition(const Partition& p) {
  if (p.tp_size < 1) return Status(StatusCode::kInvalidArgument, "tp_size must be >= 1");
  if (p.pp_size < 1) return Status(StatusCode::kInvalidArgument, "pp_size must be >= 1");
  if (p.tp_rank < 0 || p.tp_rank >= p.tp_size) {
    return Status(StatusCode::kInvalidArgument, "tp_rank " + std::to_string(p.tp_rank) +
                                                    " is outside [0, " + std::to_string(p.tp_size) +
                                                    ")");
  }
  if (p.pp_rank < 0 || p.pp_rank >= p.pp_size) {
    return Status(StatusCode::kInvalidArgument, "pp_rank " + std::to_string(p.pp_rank) +
                                                    " is outside [0, " + std::to_string(p.pp_size) +
                                                    ")");
  }
  return Status::Ok();
}

namespace {

// The length in bytes of the character that starts at s[i]: a well-formed UTF-8 sequence
// (Unicode 15, table 3-7: no overlong form, no surrogate, nothing above U+10FFFF), else 1. So a
// name that is not valid UTF-8 still splits into characters, each stray byte one of them, and
// '?' never stops inside a well-formed character.
size_t CharLength(std::string_view s, size_t i) {
  const auto at = [&](size_t k) -> unsigned {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u;
  };
  const auto within = [](unsigned byte, unsigned lo, unsigned hi) {
    return byte >= lo && byte <= hi;
  };
  const unsigned lead = at(0);
  if (within(lead, 0xC2, 0xDF)) return within(at(1), 0x80, 0xBF) ? 2 : 1;
  if (within(lead, 0xE0, 0xEF)) {
    const unsigned lo = lead == 0xE0 ? 0xA0 : 0x80, hi = lead == 0xED ? 0x9F : 0xBF;
    return within(at(1), lo, hi) && within(at(2), 0x80, 0xBF) ? 3 : 1;
  }
  if (within(lead, 0xF0, 0xF4)) {
    const unsigned lo = lead == 0xF0 ? 0x90 : 0x80, hi = lead == 0xF4 ? 0x8F : 0xBF;
    return within(at(1), lo, hi) && within(at(2), 0x80, 0xBF) && within(at(3), 0x80, 0xBF) ? 4 : 1;
  }
  return 1;  // ASCII, or a byte that starts no well-formed sequence
}

}  // namespace

bool TensorPatternMatches(std::string_view pattern, std::string_view name) {
  // Pattern and name are walked a character at a time (CharLength), so that '?' and '*' count
  // characters, not bytes: "?" matches "é" (2 bytes). Greedy matching with one backtrack point
  // (the last '*'): linear in practice, and never worse than pattern x name.
  size_t p = 0, n = 0, star = std::string_view::npos, star_n = 0;
  while (n < name.size()) {
    const size_t name_char = CharLength(name, n);
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
      continue;
    }
    if (p < pattern.size() && pattern[p] == '?') {
      ++p;
      n += name_char;
      continue;
    }
    if (p < pattern.size()) {
      // A backslash makes the whole character after it literal (a lone one at the end, which
      // ValidateTensorPattern refuses, stands for itself).
      const size_t literal = pattern[p] == '\\' && p + 1 < pattern.size() ? p + 1 : p;
      const size_t length = CharLength(pattern, literal);
      if (pattern.substr(literal, length) == name.substr(n, name_char)) {
        p = literal + length;
        n += name_char;
        continue;
      }
    }
    if (star == std::string_view::npos) return false;
    p = star + 1;
    star_n += CharLength(name, star_n);  // the '*' takes one more character
    n = star_n;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

Status ValidateTensorPattern(std::string_view pattern) {
  const std::string quoted = "tensor pattern '" + std::string(pattern.substr(0, 80)) + "'";
  if (pattern.empty()) return Status(StatusCode::kInvalidArgument, "a tensor pattern is empty");
  if (pattern.size() > 1024) {
    return Status(StatusCode::kInvalidArgument, quoted + "... is longer than 1024 bytes");
  }
  size_t backslashes = 0;
  for (size_t i = pattern.size(); i > 0 && pattern[i - 1] == '\\'; --i) ++backslashes;
  if (backslashes % 2 == 1) {
    return Status(StatusCode::kInvalidArgument,
                  quoted + " ends in a lone backslash (write \\\\ for a literal one)");
  }
  return Status::Ok();
}

std::string ExactTensorPattern(std::string_view name) {
  std::string pattern;
  for (char c : name) {
    if (c == '*' || c == '?' || c == '\\') pattern += '\\';
    pattern += c;
  }
  return pattern;
}

std::vector<size_t> MatchTensors(const ModelView& model, const std::vector<std::string>& patterns,
                                 std::vector<size_t>* unmatched) {
  std::unordered_map<std::string_view, size_t> by_name;
  for (size_t i = 0; i < model.tensors.size(); ++i) by_name.emplace(model.tensors[i].name, i);
  std::vector<bool> taken(model.tensors.size(), false);
  for (size_t p = 0; p < patterns.size(); ++p) {
    const std::string& pattern = patterns[p];
    bool matched = false;
    // An exact name (no wildcard) is looked up; the others are matched against every name.
    std::string exact;
    bool wildcard = false;
    for (size_t i = 0; i < pattern.size() && !wildcard; ++i) {
      if (pattern[i] == '\\' && i + 1 < pattern.size()) {
        exact += pattern[++i];
      } else {
        wildcard = pattern[i] == '*' || pattern[i] == '?';
        exact += pattern[i];
      }
    }
    if (!wildcard) {
      auto it = by_name.find(exact);
      if (it != by_name.end()) matched = taken[it->second] = true;
    } else {
      for (size_t i = 0; i < model.tensors.size(); ++i) {
        if (TensorPatternMatches(pattern, model.tensors[i].name)) matched = taken[i] = true;
      }
    }
    if (!matched && unmatched != nullptr) unmatched->push_back(p);
  }
  std::vector<size_t> selected;
  for (size_t i = 0; i < model.tensors.size(); ++i) {
    if (taken[i]) selected.push_back(i);
  }
  std::sort(selected.begin(), selected.end(),
            [&](size_t a, size_t b) { return model.tensors[a].name < model.tensors[b].name; });
  return selected;
}

Result<std::vector<size_t>> SelectIndices(const ModelView& model,
                                          const std::vector<std::string>& patterns) {
  for (const std::string& pattern : patterns) {
    Status valid = ValidateTensorPattern(pattern);
    if (!valid.ok()) return valid;
  }
  std::vector<size_t> unmatched;
  std::vector<size_t> selected = MatchTensors(model, patterns, &unmatched);
  if (!unmatched.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor pattern '" + patterns[unmatched.front()] + "' matches none of the " +
                      std::to_string(model.tensors.size()) + " tensors");
  }
  return selected;
}

Result<ModelView> SelectTensors(const ModelView& model, const std::vector<std::string>& patterns) {
  Result<std::vector<size_t>> selected = SelectIndices(model, patterns);
  if (!selected.ok()) return selected.status();
  ModelView view;
  for (size_t i : *selected) view.tensors.push_back(model.tensors[i]);
  return view;
}

}  // namespace netloader
