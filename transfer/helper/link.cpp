#include "transfer/helper/link.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace netloader::transfer::helper {
namespace {

// A frame: 4-byte body length, 1-byte op, the body. Bounded so that a garbled length cannot
// make the reader allocate without limit (a chunk table of a million spans fits).
constexpr uint32_t kMaxBody = 64u << 20;
constexpr size_t kHeader = 5;

Status Errno(const std::string& what) {
  return Status(StatusCode::kUnavailable, what + ": " + std::strerror(errno));
}

}  // namespace

Message& Message::U64(uint64_t v) {
  for (int i = 0; i < 8; ++i) body_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return *this;
}

Message& Message::Str(const std::string& s) {
  U64(s.size());
  body_ += s;
  return *this;
}

Message& Message::Put(const Status& status) {
  U64(static_cast<uint64_t>(status.code()));
  return Str(status.message());
}

uint64_t Message::U64() {
  if (body_.size() - read_ < 8) {
    bad_ = true;
    read_ = body_.size();
    return 0;
  }
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= static_cast<uint64_t>(static_cast<uint8_t>(body_[read_ + i])) << (8 * i);
  read_ += 8;
  return v;
}

std::string Message::Str() {
  const uint64_t n = U64();
  if (body_.size() - read_ < n) {
    bad_ = true;
    read_ = body_.size();
    return "";
  }
  std::string s = body_.substr(read_, n);
  read_ += n;
  return s;
}

Status Message::GetStatus() {
  const auto code = static_cast<StatusCode>(U64());
  std::string message = Str();
  if (code == StatusCode::kOk) return Status::Ok();
  return Status(code, std::move(message));
}

Link::~Link() {
  if (fd_ >= 0) close(fd_);
}

Link& Link::operator=(Link&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void Link::Shutdown() {
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
}

Status Link::Send(const Message& message, int pass_fd) {
  if (fd_ < 0) return Status(StatusCode::kUnavailable, "the helper link is closed");
  const std::string& body = message.body();
  char header[kHeader];
  const auto size = static_cast<uint32_t>(body.size());
  std::memcpy(header, &size, 4);
  header[4] = static_cast<char>(message.op());
  iovec iov[2] = {{header, kHeader}, {const_cast<char*>(body.data()), body.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &pass_fd, sizeof(int));
  }
  size_t total = kHeader + body.size();
  size_t sent = 0;
  while (sent < total) {
    ssize_t n = sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("sending to the MPI helper");
    }
    sent += static_cast<size_t>(n);
    // Continue after a partial send without the descriptor (it went with the first byte).
    msg.msg_control = nullptr;
    msg.msg_controllen = 0;
    size_t skip = static_cast<size_t>(n);
    while (msg.msg_iovlen > 0 && skip >= msg.msg_iov[0].iov_len) {
      skip -= msg.msg_iov[0].iov_len;
      ++msg.msg_iov;
      --msg.msg_iovlen;
    }
    if (msg.msg_iovlen > 0) {
      msg.msg_iov[0].iov_base = static_cast<char*>(msg.msg_iov[0].iov_base) + skip;
      msg.msg_iov[0].iov_len -= skip;
    }
  }
  return Status::Ok();
}

Result<Message> Link::Receive(Clock::time_point deadline, const std::atomic<bool>* cancel,
                              int* received_fd) {
  if (fd_ < 0) return Status(StatusCode::kUnavailable, "the helper link is closed");
  std::string frame;
  size_t want = kHeader;
  bool have_header = false;
  char buffer[kHeader];
  size_t got = 0;
  while (true) {
    if (cancel != nullptr && cancel->load()) return Status(StatusCode::kCancelled, "cancelled");
    const auto now = Clock::now();
    if (now >= deadline)
      return Status(StatusCode::kTimeout, "the MPI helper did not answer in time");
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    pollfd p{fd_, POLLIN, 0};
    const int timeout = static_cast<int>(std::min<int64_t>(left.count() + 1, cancel ? 20 : 1000));
    const int ready = poll(&p, 1, timeout);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return Errno("waiting for the MPI helper");
    }
    if (ready == 0) continue;
    ssize_t n;
    if (!have_header) {
      iovec iov{buffer + got, want - got};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
      if (n > 0) {
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
          if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
            if (received_fd != nullptr && *received_fd < 0) {
              *received_fd = fd;
            } else {
              close(fd);
            }
          }
        }
      }
    } else {
      n = read(fd_, frame.data() + got, want - got);
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Errno("reading from the MPI helper");
    }
    if (n == 0) return Status(StatusCode::kUnavailable, "the MPI helper closed its socket");
    got += static_cast<size_t>(n);
    if (got < want) continue;
    if (!have_header) {
      uint32_t size;
      std::memcpy(&size, buffer, 4);
      if (size > kMaxBody) {
        return Status(StatusCode::kProtocolMismatch,
                      "a helper message of " + std::to_string(size) + " bytes");
      }
      have_header = true;
      frame.resize(size);
      want = size;
      got = 0;
      if (want > 0) continue;
    }
    Message message;
    message.set(static_cast<Op>(buffer[4]), std::move(frame));
    return message;
  }
}

Result<std::pair<Link, Link>> LinkPair() {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return Errno("socketpair");
  }
  return std::make_pair(Link(fds[0]), Link(fds[1]));
}

}  // namespace netloader::transfer::helper
