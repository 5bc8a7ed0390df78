#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace netloader {

// The closed set of outcomes every netloader call reports. No exception crosses the public API.
enum class StatusCode {
  kOk = 0,
  kInvalidArgument,      // bad input from the caller: a malformed file, an option out of range
  kNotFound,             // a file, tensor or session that does not exist
  kUnavailable,          // a peer or resource cannot be reached or refuses for now
  kTimeout,              // a deadline passed
  kBusy,                 // the server is at its limit of concurrent clients
  kFingerprintMismatch,  // the two sides hold different models or partitions
  kProtocolMismatch,     // a message of another protocol version, or one that does not parse
  kChecksumMismatch,     // received bytes differ from the source's digests
  kTransferFailed,       // the data plane failed (peer died, MPI error)
  kPermissionDenied,     // authentication failed
  kCancelled,            // stopped on request
  kInternal,             // a bug or an unexpected library failure
};

inline const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kInvalidArgument:
      return "InvalidArgument";
    case StatusCode::kNotFound:
      return "NotFound";
    case StatusCode::kUnavailable:
      return "Unavailable";
    case StatusCode::kTimeout:
      return "Timeout";
    case StatusCode::kBusy:
      return "Busy";
    case StatusCode::kFingerprintMismatch:
      return "FingerprintMismatch";
    case StatusCode::kProtocolMismatch:
      return "ProtocolMismatch";
    case StatusCode::kChecksumMismatch:
      return "ChecksumMismatch";
    case StatusCode::kTransferFailed:
      return "TransferFailed";
    case StatusCode::kPermissionDenied:
      return "PermissionDenied";
    case StatusCode::kCancelled:
      return "Cancelled";
    case StatusCode::kInternal:
      return "Internal";
  }
  return "Unknown";
}

// One field that differs, with both sides' values, e.g. {"partition.tp_size", "2", "4"}.
struct FieldDiff {
  std::string field;
  std::string server_value;
  std::string client_value;
};
inline bool operator==(const FieldDiff& a, const FieldDiff& b) {
  return a.field == b.field && a.server_value == b.server_value && a.client_value == b.client_value;
}

// A code plus a message that names what went wrong, and for a refused fingerprint the fields
// that differ (also named in the message). Cheap to copy when OK.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message, std::vector<FieldDiff> diffs = {})
      : code_(code), message_(std::move(message)), diffs_(std::move(diffs)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // The fields a refusal named as differing (kFingerprintMismatch, or a rendezvous that differs);
  // empty otherwise.
  const std::vector<FieldDiff>& diffs() const { return diffs_; }
  std::string ToString() const {
    return ok() ? "OK" : std::string(StatusCodeName(code_)) + ": " + message_;
  }
  // Returns a copy whose message is prefixed with `context`.
  Status WithContext(const std::string& context) const {
    return ok() ? *this : Status(code_, context + ": " + message_, diffs_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  std::vector<FieldDiff> diffs_;
};

// Either a value or the non-OK Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "Result built from an OK status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & {
    assert(ok());
    return *value_;
  }
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  Status status_;  // OK exactly when value_ holds a value
  std::optional<T> value_;
};

}  // namespace netloader
