// The shared secret's file and key checks (netloader/secret.h): reading, validating and creating
// it. libzmq makes and checks the keys; no socket is opened here.

#include "netloader/secret.h"

#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

namespace netloader {
namespace {

constexpr size_t kSecretChars = 40;  // Z85 of a 32-byte CURVE key

std::string Errno(const std::string& what, const std::string& path) {
  return what + " '" + path + "': " + std::strerror(errno);
}

// Creates every missing directory above `path`, mode 0700.
Status MakeParents(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    const std::string dir = path.substr(0, slash);
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status(StatusCode::kUnavailable, Errno("cannot create directory", dir));
    }
  }
  return Status::Ok();
}

// Writes a fresh secret to a private temporary file and links it into place, so a concurrent
// reader sees either no file or a whole one. Losing the race to another creator is fine.
Status CreateSecretFile(const std::string& path) {
  Status status = MakeParents(path);
  if (!status.ok()) return status;
  char public_key[kSecretChars + 1], secret[kSecretChars + 1];
  if (zmq_curve_keypair(public_key, secret) != 0) {
    return Status(StatusCode::kUnavailable, "this libzmq cannot make CURVE keys");
  }
  std::string temp = path + ".XXXXXX";
  const int fd = mkstemp(temp.data());  // mode 0600
  if (fd < 0) return Status(StatusCode::kUnavailable, Errno("cannot create a file next to", path));
  const std::string text = std::string(secret) + "\n";
  const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  const bool linked = written && (link(temp.c_str(), path.c_str()) == 0 || errno == EEXIST);
  const std::string error = Errno("cannot write", path);
  unlink(temp.c_str());
  if (!linked) return Status(StatusCode::kUnavailable, error);
  return Status::Ok();
}

// Checks a secret file's first bytes, `text`, of `size` in all: the key, then at most one line
// ending, "\n" or "\r\n", as editors and CreateSecretFile write it. Anything else is refused
// rather than trimmed, so that a stray second line, a key pasted twice or an empty file (an
// empty secret would mean no authentication at all) is noticed. The messages never quote the
// file's other bytes: they may be key material.
Status ParseSecretFile(std::string_view text, uint64_t size) {
  const std::string holds =
      "it must hold a secret key, 40 characters of Z85 text, then at most one line ending (\\n "
      "or \\r\\n)";
  const auto invalid = [&](const std::string& what) {
    return Status(StatusCode::kInvalidArgument, what + "; " + holds);
  };
  const bool more = size > text.size();  // beyond what was read
  if (size == 0) return invalid("it is empty");
  const size_t line_end = std::min(text.find_first_of("\r\n"), text.size());
  if (line_end == 0) return invalid("its first line is empty");
  if (line_end == text.size() && more) {
    return invalid("its first line is longer than " + std::to_string(text.size()) + " bytes");
  }
  Status key = ValidateSecret(std::string(text.substr(0, line_end)));
  if (!key.ok()) return key;
  const std::string_view rest = text.substr(line_end);
  if (!more && (rest.empty() || rest == "\n" || rest == "\r\n")) return Status::Ok();
  // What follows the key: line endings alone are shown, other bytes only counted.
  if (more || rest.find_first_not_of("\r\n") != std::string_view::npos) {
    const uint64_t after = std::max<uint64_t>(size, text.size()) - kSecretChars;
    return invalid("the key is followed by " + std::to_string(after) +
                   " bytes that are more than a line ending");
  }
  std::string shown;
  for (char c : rest) shown += c == '\n' ? "\\n" : "\\r";
  return invalid("the key is followed by \"" + shown + "\", not by one line ending");
}

}  // namespace

std::string DefaultSecretPath() {
  if (const char* path = std::getenv("NETLOADER_SECRET_FILE"); path && *path) return path;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.config/netloader/secret";
}

Status ValidateSecret(const std::string& secret) {
  if (secret.empty()) return Status::Ok();
  uint8_t key[32];
  if (secret.size() != kSecretChars || !zmq_z85_decode(key, secret.c_str())) {
    return Status(StatusCode::kInvalidArgument,
                  "a shared secret is 40 characters of Z85 text (a CURVE secret key), got " +
                      std::to_string(secret.size()) + " characters");
  }
  if (!zmq_has("curve")) {
    return Status(StatusCode::kUnavailable, "this libzmq was built without CURVE security");
  }
  return Status::Ok();
}

Result<std::string> LoadOrCreateSecret(const std::string& path) {
  if (path.empty()) return Status(StatusCode::kInvalidArgument, "the secret file path is empty");
  struct stat info;
  if (stat(path.c_str(), &info) != 0) {
    if (errno != ENOENT) return Status(StatusCode::kUnavailable, Errno("cannot read", path));
    Status created = CreateSecretFile(path);
    if (!created.ok()) return created;
    if (stat(path.c_str(), &info) != 0) {
      return Status(StatusCode::kUnavailable, Errno("cannot read", path));
    }
  }
  if (!S_ISREG(info.st_mode)) {
    return Status(StatusCode::kInvalidArgument, "secret file '" + path + "' is not a regular file");
  }
  if (info.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(info.st_mode & 07777));
    return Status(StatusCode::kPermissionDenied,
                  "secret file '" + path + "' may be read or changed by others (mode " + mode +
                      "); make it private: chmod 600 " + path);
  }
  std::FILE* file = std::fopen(path.c_str(), "re");
  if (!file) return Status(StatusCode::kUnavailable, Errno("cannot read", path));
  char buffer[128] = {};
  const size_t n = std::fread(buffer, 1, sizeof buffer, file);
  std::fclose(file);
  Status parsed = ParseSecretFile(std::string_view(buffer, n), static_cast<uint64_t>(info.st_size));
  if (!parsed.ok()) return parsed.WithContext("secret file '" + path + "'");
  return std::string(buffer, kSecretChars);
}

}  // namespace netloader
