#pragma once

// The private socket protocol between a host and its MPI helper process (DESIGN.md, "MPI in
// helper processes"): framed messages over a Unix stream socket, with file descriptors (memfd
// regions, further sockets) passed alongside. Both ends are built from this one source tree, so
// this is not a public wire; PROTOCOL.md does not cover it.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <string>

#include "netloader/status.h"

namespace netloader::transfer::helper {

using Clock = std::chrono::steady_clock;

// How long the other process may take to answer a request, or to make room for a message sent
// to it, before it counts as wedged.
inline constexpr std::chrono::seconds kAnswerTimeout{5};

enum class Op : uint8_t {
  // helper -> host on the main socket, once: MPI is up (rendezvous URI) or failed (status).
  kReady = 1,
  kFailed,
  // host -> helper on the main socket.
  kHealth,  // -> kStatus
  kOpen,    // + one end of a new channel socket; no reply
  // host -> helper on a channel socket.
  kMap,      // id, size + the region's memfd -> kStatus; unmapped when the channel ends
  kListen,   // -> kPort or kStatus (failed)
  kAccept,   // timeout ms -> kStatus
  kConnect,  // address, timeout ms -> kStatus
  kStream,   // sending, window, stall ms, chunk table -> kDone..., kEnd
  kGo,       // chunk index: it may be posted
  kAbandon,  // the peer is unreliable: leave without a collective disconnect
  // helper -> host.
  kStatus,  // code, message
  kPort,    // port name, rendezvous URI
  kDone,    // chunk index
  kEnd,     // status of the stream
};

// A message's body: a sequence of little-endian integers and length-prefixed strings.
class Message {
 public:
  Message() = default;
  explicit Message(Op op) : op_(op) {}
  Op op() const { return op_; }

  Message& U64(uint64_t v);
  Message& Str(const std::string& s);
  Message& Put(const Status& status);

  // Readers: advance through the body; a short body reads zeros and sets bad().
  uint64_t U64();
  std::string Str();
  Status GetStatus();
  bool bad() const { return bad_; }

  const std::string& body() const { return body_; }
  void set(Op op, std::string body) {
    op_ = op;
    body_ = std::move(body);
    read_ = 0;
    bad_ = false;
  }

 private:
  Op op_ = Op::kStatus;
  std::string body_;
  size_t read_ = 0;
  bool bad_ = false;
};

// One end of a socket to the other process. Sends are whole-message and thread-safe only if
// the caller serialises them; so are receives.
class Link {
 public:
  explicit Link(int fd = -1) : fd_(fd) {}
  ~Link();
  Link(Link&& other) noexcept { *this = std::move(other); }
  Link& operator=(Link&& other) noexcept;
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  // Sends `message`, with `pass_fd` attached when it is not -1. Unavailable once the peer is gone;
  // Timeout when it has not made room for the message within kAnswerTimeout (it is wedged).
  Status Send(const Message& message, int pass_fd = -1);
  // Waits for the next message until `deadline` (Timeout) or `cancel` (Cancelled, checked every
  // 20 ms). The descriptor passed with a kOpen or kMap lands in *received_fd (the caller owns
  // it). Unavailable when the peer closed its end or died. Reads ahead: messages that arrived
  // together cost one system call.
  Result<Message> Receive(Clock::time_point deadline, const std::atomic<bool>* cancel = nullptr,
                          int* received_fd = nullptr);
  // Stops both directions: the peer's reads see end of file.
  void Shutdown();

 private:
  bool TakeFrame(Message* message);    // the next whole message read ahead, if there is one
  Status ReadSome(bool* would_block);  // reads what has arrived, without waiting

  int fd_ = -1;
  std::string in_;  // bytes read ahead, from in_at_ on
  size_t in_at_ = 0;
  std::deque<int> fds_;  // descriptors read ahead, for the next kOpen or kMap
};

// A connected pair of stream sockets, both close-on-exec. Errors: Unavailable.
Result<std::pair<Link, Link>> LinkPair();

}  // namespace netloader::transfer::helper
