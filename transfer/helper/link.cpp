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
  for (int fd : fds_) close(fd);
}

Link& Link::operator=(Link&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    for (int fd : fds_) close(fd);
    fd_ = other.fd_;
    other.fd_ = -1;
    in_ = std::move(other.in_);
    in_at_ = other.in_at_;
    fds_ = std::move(other.fds_);
    other.in_.clear();
    other.in_at_ = 0;
    other.fds_.clear();
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
  const Clock::time_point deadline = Clock::now() + kAnswerTimeout;
  size_t total = kHeader + body.size();
  size_t sent = 0;
  while (sent < total) {
    ssize_t n = sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return Errno("sending to the MPI helper");
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        return Status(StatusCode::kTimeout, "the MPI helper took no message for " +
                                                std::to_string(kAnswerTimeout.count()) + " s");
      }
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, static_cast<int>(left.count()) + 1) < 0 && errno != EINTR) {
        return Errno("waiting to send to the MPI helper");
      }
      continue;
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

bool Link::TakeFrame(Message* message) {
  const size_t available = in_.size() - in_at_;
  if (available < kHeader) return false;
  uint32_t size;
  std::memcpy(&size, in_.data() + in_at_, 4);
  if (available < kHeader + size) return false;
  message->set(static_cast<Op>(in_[in_at_ + 4]), in_.substr(in_at_ + kHeader, size));
  in_at_ += kHeader + size;
  if (in_at_ == in_.size()) {
    in_.clear();
    in_at_ = 0;
  }
  return true;
}

Status Link::ReadSome(bool* would_block) {
  char buffer[64 << 10];
  iovec iov{buffer, sizeof(buffer)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  *would_block = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
  if (n < 0) return *would_block ? Status::Ok() : Errno("reading from the MPI helper");
  if (n == 0) return Status(StatusCode::kUnavailable, "the MPI helper closed its socket");
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds_.push_back(fd);
    }
  }
  in_.append(buffer, static_cast<size_t>(n));
  return Status::Ok();
}

Result<Message> Link::Receive(Clock::time_point deadline, const std::atomic<bool>* cancel,
                              int* received_fd) {
  if (fd_ < 0) return Status(StatusCode::kUnavailable, "the helper link is closed");
  while (true) {
    Message message;
    if (TakeFrame(&message)) {
      // Only these carry a descriptor; they are never sent back to back with one another
      // without a reply between, so descriptors pair with them in order.
      if ((message.op() == Op::kOpen || message.op() == Op::kMap) && !fds_.empty()) {
        if (received_fd != nullptr) {
          *received_fd = fds_.front();
        } else {
          close(fds_.front());
        }
        fds_.pop_front();
      }
      return message;
    }
    if (in_.size() - in_at_ >= kHeader) {
      uint32_t size;
      std::memcpy(&size, in_.data() + in_at_, 4);
      if (size > kMaxBody) {
        return Status(StatusCode::kProtocolMismatch,
                      "a helper message of " + std::to_string(size) + " bytes");
      }
    }
    // Read without waiting first: mid-stream the next message is usually there already.
    bool would_block = false;
    Status read = ReadSome(&would_block);
    if (!read.ok()) return read;
    if (!would_block) continue;
    if (cancel != nullptr && cancel->load()) return Status(StatusCode::kCancelled, "cancelled");
    const auto now = Clock::now();
    if (now >= deadline) {
      return Status(StatusCode::kTimeout, "the MPI helper did not answer in time");
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    pollfd p{fd_, POLLIN, 0};
    const int timeout = static_cast<int>(std::min<int64_t>(left.count() + 1, cancel ? 20 : 1000));
    if (poll(&p, 1, timeout) < 0 && errno != EINTR) return Errno("waiting for the MPI helper");
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
