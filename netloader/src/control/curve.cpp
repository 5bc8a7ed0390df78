#include "netloader/src/control/curve.h"

namespace netloader {
namespace {

constexpr size_t kSecretChars = 40;  // Z85 of a 32-byte CURVE key

// libzmq initialises OpenPGM when it makes its first context, and OpenPGM reads the environment
// then (getenv). MPI's start-up, which may run on another thread at that moment (a load starting
// MPI while it registers, InitializeTransport on a thread), writes the environment (setenv), and
// glibc's getenv is not safe against a concurrent setenv: a load crashed in pgm_init's getenv
// about once in 40 runs. A context made as the library is loaded, before any of its threads
// exists, does that initialisation once for the process (it is reference-counted, so later
// contexts skip it). It has no socket, so it never starts a thread; it is never freed.
void* const kOpenPgmInitialised = zmq_ctx_new();

std::string PublicKeyOf(const std::string& secret) {
  char public_key[kSecretChars + 1] = {};
  if (zmq_curve_public(public_key, secret.c_str()) != 0) {
    throw zmq::error_t();  // libzmq without CURVE: ValidateSecret reports it first
  }
  return public_key;
}

}  // namespace

void MakeCurveServer(zmq::socket_t& socket, const std::string& secret) {
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, secret);
}

void MakeCurveClient(zmq::socket_t& socket, const std::string& secret) {
  const std::string public_key = PublicKeyOf(secret);
  socket.set(zmq::sockopt::curve_serverkey, public_key);
  socket.set(zmq::sockopt::curve_publickey, public_key);
  socket.set(zmq::sockopt::curve_secretkey, secret);
}

ZapHandler::ZapHandler(zmq::context_t& context, const std::string& secret)
    : socket_(context, zmq::socket_type::rep), allowed_key_(32, '\0') {
  zmq_z85_decode(reinterpret_cast<uint8_t*>(allowed_key_.data()), PublicKeyOf(secret).c_str());
  socket_.set(zmq::sockopt::linger, 0);
  socket_.bind("inproc://zeromq.zap.01");  // the endpoint libzmq asks, per context
}

bool ZapHandler::AnswerOne(std::optional<std::string>* refused) {
  // Request frames (ZMQ RFC 27): version, request id, domain, address, identity, mechanism,
  // then the mechanism's credentials (CURVE: the client's 32-byte public key).
  std::vector<zmq::message_t> frames;
  do {
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
    frames.push_back(std::move(frame));
  } while (frames.back().more());
  if (frames.empty()) return false;
  const bool allowed = frames.size() == 7 && frames[5].to_string() == "CURVE" &&
                       frames[6].to_string() == allowed_key_;
  const std::string request_id = frames.size() > 1 ? frames[1].to_string() : "";
  socket_.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(std::string(allowed ? "200" : "400")), zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(std::string(allowed ? "OK" : "unknown key")), zmq::send_flags::sndmore);
  socket_.send(zmq::str_buffer(""), zmq::send_flags::sndmore);  // user id
  socket_.send(zmq::str_buffer(""));                            // metadata
  if (!allowed) *refused = frames.size() > 3 ? frames[3].to_string() : std::string("?");
  return true;
}

}  // namespace netloader
