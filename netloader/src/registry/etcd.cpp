#include "netloader/src/registry/etcd.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "netloader/src/metrics/metrics.h"
#include "transfer/call_with_deadline.h"

namespace netloader::registry {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxAnswer = 64u << 20;  // a range over a fleet's records is far smaller

int MillisLeft(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

// Waits until `fd` is ready for `events`; false at the deadline.
bool WaitFor(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    const int left = MillisLeft(deadline);
    const int n = poll(&p, 1, left);
    if (n > 0) return true;
    if (n == 0 || (n < 0 && errno != EINTR) || left == 0) return false;
  }
}

// One address to connect to.
struct Address {
  int family = 0;
  int socktype = 0;
  sockaddr_storage address{};
  socklen_t length = 0;
};

// getaddrinfo of `host`:`port` with `flags`, copied out. Errors: Unavailable, its message.
Result<std::vector<Address>> Lookup(const std::string& host, const std::string& port, int flags) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG | flags;
  addrinfo* list = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &list); rc != 0) {
    return Status(StatusCode::kUnavailable, gai_strerror(rc));
  }
  std::vector<Address> found;
  for (addrinfo* a = list; a != nullptr; a = a->ai_next) {
    Address entry;
    entry.family = a->ai_family;
    entry.socktype = a->ai_socktype;
    entry.length = std::min<socklen_t>(a->ai_addrlen, sizeof(entry.address));
    std::memcpy(&entry.address, a->ai_addr, entry.length);
    found.push_back(entry);
  }
  freeaddrinfo(list);
  return found;
}

// The addresses of `host`:`port`. A numeric address resolves at once; a name is looked up on a
// thread of its own, left to finish alone if DNS has not answered by the deadline (getaddrinfo
// has none).
Result<std::vector<Address>> Resolve(const std::string& host, const std::string& port,
                                     Clock::time_point deadline) {
  Result<std::vector<Address>> numeric = Lookup(host, port, AI_NUMERICHOST);
  if (numeric.ok()) return numeric;
  return transfer::CallWithDeadline<std::vector<Address>>(
      "looking up " + host, deadline,
      [host, port]() -> Result<std::vector<Address>> { return Lookup(host, port, 0); });
}

// A closed-on-return socket.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// Decodes a chunked HTTP body; false when it is malformed.
bool Unchunk(const std::string& in, std::string* out) {
  size_t at = 0;
  while (true) {
    const size_t eol = in.find("\r\n", at);
    if (eol == std::string::npos) return false;
    size_t size = 0;
    try {
      size = std::stoul(in.substr(at, eol - at), nullptr, 16);
    } catch (...) {
      return false;
    }
    at = eol + 2;
    if (size == 0) return true;  // trailers follow; nothing the registry reads
    if (in.size() - at < size) return false;
    out->append(in, at, size);
    at += size + 2;
  }
}

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (!end.empty()) end.back() = static_cast<char>(end.back() + 1);
  return end.empty() ? std::string(1, '\0') : end;
}

// A gateway integer: proto3's JSON writes 64-bit integers as strings.
int64_t Integer(const Json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    try {
      return std::stoll(it->get<std::string>());
    } catch (...) {
    }
  }
  return 0;
}

}  // namespace

std::string Base64(const std::string& bytes) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kAlphabet[v & 63] : '=';
  }
  return out;
}

bool FromBase64(const std::string& text, std::string* bytes) {
  bytes->clear();
  uint32_t v = 0;
  int bits = 0;
  for (char c : text) {
    int d;
    if (c >= 'A' && c <= 'Z') {
      d = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      d = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      d = c - '0' + 52;
    } else if (c == '+') {
      d = 62;
    } else if (c == '/') {
      d = 63;
    } else if (c == '=') {
      break;
    } else {
      return false;
    }
    v = (v << 6) | static_cast<uint32_t>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes->push_back(static_cast<char>((v >> bits) & 0xff));
    }
  }
  return true;
}

Result<Etcd> Etcd::Parse(const std::string& url) {
  const std::string scheme = "http://";
  auto bad = [&](const std::string& why) {
    return Status(StatusCode::kInvalidArgument, "registry URL '" + url + "': " + why);
  };
  if (url.compare(0, scheme.size(), scheme) != 0) {
    return bad("must begin with http:// (etcd's client URL; TLS is not supported)");
  }
  Etcd etcd;
  etcd.url_ = url;
  std::string rest = url.substr(scheme.size());
  const size_t slash = rest.find('/');
  std::string path = slash == std::string::npos ? "" : rest.substr(slash);
  rest = rest.substr(0, slash);
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size()) {
    return bad("needs HOST:PORT");
  }
  etcd.host_ = rest.substr(0, colon);
  etcd.port_ = rest.substr(colon + 1);
  if (etcd.host_.size() > 2 && etcd.host_.front() == '[' && etcd.host_.back() == ']') {
    etcd.host_ = etcd.host_.substr(1, etcd.host_.size() - 2);
  }
  if (!std::all_of(etcd.port_.begin(), etcd.port_.end(), ::isdigit) || etcd.port_.size() > 5 ||
      std::stoi(etcd.port_) == 0 || std::stoi(etcd.port_) > 65535) {
    return bad("port '" + etcd.port_ + "' is not a port number");
  }
  while (!path.empty() && path.back() == '/') path.pop_back();
  etcd.prefix_ = path.empty() ? "/netloader/" : path + "/";
  return etcd;
}

Result<std::string> Etcd::Call(const std::string& path, const std::string& body,
                               Clock::time_point deadline) const {
  Result<std::string> answer = Exchange(path, body, deadline);
  // "/v3/lease/keepalive" -> "keepalive": the operation, for the metric.
  metrics::RegistryCall(path.substr(path.rfind('/') + 1).c_str(), answer.ok());
  return answer;
}

Result<std::string> Etcd::Exchange(const std::string& path, const std::string& body,
                                   Clock::time_point deadline) const {
  const std::string where = "etcd at " + url_;
  Result<std::vector<Address>> found = Resolve(host_, port_, deadline);
  if (!found.ok()) return Status(StatusCode::kUnavailable, where + ": " + found.status().message());
  std::string connect_error = "no address";
  int fd = -1;
  for (const Address& a : *found) {
    const int s = socket(a.family, a.socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) continue;
    if (connect(s, reinterpret_cast<const sockaddr*>(&a.address), a.length) == 0 ||
        (errno == EINPROGRESS && WaitFor(s, POLLOUT, deadline))) {
      int error = 0;
      socklen_t len = sizeof(error);
      getsockopt(s, SOL_SOCKET, SO_ERROR, &error, &len);
      if (error == 0) {
        fd = s;
        break;
      }
      connect_error = std::strerror(error);
    } else {
      connect_error =
          errno == EINPROGRESS ? "no connection within the deadline" : std::strerror(errno);
    }
    close(s);
  }
  if (fd < 0) return Status(StatusCode::kUnavailable, where + " unreachable: " + connect_error);
  Socket socket(fd);
  const std::string request =
      "POST " + path + " HTTP/1.1\r\nHost: " + host_ + ":" + port_ +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\nConnection: close\r\n\r\n" + body;
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!WaitFor(fd, POLLOUT, deadline)) {
        return Status(StatusCode::kTimeout, where + " took no request in time");
      }
    } else {
      return Status(StatusCode::kUnavailable, where + ": " + std::strerror(errno));
    }
  }
  std::string answer;
  char buffer[16384];
  while (true) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      answer.append(buffer, static_cast<size_t>(n));
      if (answer.size() > kMaxAnswer) {
        return Status(StatusCode::kUnavailable, where + " answered more than 64 MiB");
      }
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN || errno == EINTR) {
      if (!WaitFor(fd, POLLIN, deadline)) {
        return Status(StatusCode::kTimeout, where + " did not answer " + path + " in time");
      }
    } else {
      return Status(StatusCode::kUnavailable, where + ": " + std::strerror(errno));
    }
  }
  const size_t head_end = answer.find("\r\n\r\n");
  if (answer.compare(0, 9, "HTTP/1.1 ") != 0 || head_end == std::string::npos) {
    return Status(StatusCode::kUnavailable, where + " answered " + path + " with no HTTP reply");
  }
  const int code = std::atoi(answer.c_str() + 9);
  std::string head = answer.substr(0, head_end);
  std::transform(head.begin(), head.end(), head.begin(), ::tolower);
  std::string text = answer.substr(head_end + 4);
  if (head.find("transfer-encoding: chunked") != std::string::npos) {
    std::string plain;
    if (!Unchunk(text, &plain)) {
      return Status(StatusCode::kUnavailable, where + " sent a malformed chunked reply");
    }
    text = std::move(plain);
  }
  if (code != 200) {
    const Json error = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    const std::string message =
        error.is_object() && error.contains("message") && error["message"].is_string()
            ? error["message"].get<std::string>()
            : "HTTP " + std::to_string(code);
    return Status(code == 404 ? StatusCode::kNotFound : StatusCode::kUnavailable,
                  where + ": " + path + ": " + message);
  }
  return text;
}

Result<int64_t> Etcd::Grant(int ttl_seconds, Clock::time_point deadline) const {
  Result<std::string> text = Call("/v3/lease/grant", Json{{"TTL", ttl_seconds}}.dump(), deadline);
  if (!text.ok()) return text.status();
  const Json j = Json::parse(*text, nullptr, false);
  const int64_t id = j.is_object() ? Integer(j, "ID") : 0;
  if (id == 0) return Status(StatusCode::kUnavailable, "etcd at " + url_ + " granted no lease");
  return id;
}

Result<int64_t> Etcd::KeepAlive(int64_t lease, Clock::time_point deadline) const {
  Result<std::string> text =
      Call("/v3/lease/keepalive", Json{{"ID", std::to_string(lease)}}.dump(), deadline);
  if (!text.ok()) return text.status();
  // A stream of {"result": ...}; one request gives one.
  const Json j = Json::parse(text->substr(0, text->find('\n')), nullptr, false);
  if (!j.is_object() || !j.contains("result") || !j["result"].is_object()) {
    return Status(StatusCode::kUnavailable, "etcd at " + url_ + " answered a keepalive oddly");
  }
  return Integer(j["result"], "TTL");
}

Status Etcd::Revoke(int64_t lease, Clock::time_point deadline) const {
  Result<std::string> text =
      Call("/v3/lease/revoke", Json{{"ID", std::to_string(lease)}}.dump(), deadline);
  return text.ok() ? Status::Ok() : text.status();
}

Status Etcd::Put(const std::string& key, const std::string& value, int64_t lease,
                 Clock::time_point deadline) const {
  Json body{{"key", Base64(key)}, {"value", Base64(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  Result<std::string> text = Call("/v3/kv/put", body.dump(), deadline);
  return text.ok() ? Status::Ok() : text.status();
}

Result<bool> Etcd::PutIfAbsent(const std::string& key, const std::string& value, int64_t lease,
                               Clock::time_point deadline) const {
  Json put{{"key", Base64(key)}, {"value", Base64(value)}};
  if (lease != 0) put["lease"] = std::to_string(lease);
  const Json body{
      {"compare",
       Json::array({{{"key", Base64(key)}, {"target", "CREATE"}, {"create_revision", "0"}}})},
      {"success", Json::array({{{"request_put", put}}})}};
  Result<std::string> text = Call("/v3/kv/txn", body.dump(), deadline);
  if (!text.ok()) return text.status();
  const Json j = Json::parse(*text, nullptr, false);
  if (!j.is_object()) {
    return Status(StatusCode::kUnavailable, "etcd at " + url_ + " answered a transaction oddly");
  }
  // Proto3's JSON leaves out a false "succeeded".
  return j.value("succeeded", false);
}

Result<std::vector<KeyValue>> Etcd::Range(const std::string& prefix,
                                          Clock::time_point deadline) const {
  Result<std::string> text = Call(
      "/v3/kv/range",
      Json{{"key", Base64(prefix)}, {"range_end", Base64(PrefixEnd(prefix))}}.dump(), deadline);
  if (!text.ok()) return text.status();
  const Json j = Json::parse(*text, nullptr, false);
  if (!j.is_object()) {
    return Status(StatusCode::kUnavailable, "etcd at " + url_ + " answered a range oddly");
  }
  std::vector<KeyValue> out;
  if (auto kvs = j.find("kvs"); kvs != j.end() && kvs->is_array()) {
    for (const Json& kv : *kvs) {
      KeyValue entry;
      if (!kv.is_object() || !kv.contains("key") || !kv["key"].is_string() ||
          (kv.contains("value") && !kv["value"].is_string()) ||
          !FromBase64(kv["key"].get<std::string>(), &entry.key) ||
          !FromBase64(kv.value("value", std::string()), &entry.value)) {
        continue;
      }
      out.push_back(std::move(entry));
    }
  }
  return out;
}

}  // namespace netloader::registry
