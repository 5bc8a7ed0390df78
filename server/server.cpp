// The server's facade: Server::Start and StartRelay, and the object the host holds, which wires
// the server's parts together. The parts, each in its own file: ControlLoop (the control
// thread, which owns the ControlSocket and the sessions), AdmissionPolicy (whom to admit or
// redirect), Session (one client's streaming thread), RelayState (what is served, and what a
// relay holds; with StreamCache in stream.h), RingPool (staging rings), StatsCounter
// (ServerStats).

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>

#include "netloader/limits.h"
#include "netloader/secret.h"
#include "netloader/src/base/clock.h"
#include "netloader/src/base/log.h"
#include "netloader/src/registry/publisher.h"
#include "netloader/src/stream/manifest.h"
#include "netloader/src/stream/relay_feed.h"
#include "server/control_loop.h"
#include "server/control_socket.h"
#include "server/relay_state.h"
#include "server/ring_pool.h"
#include "server/server_internal.h"
#include "server/stats.h"
#include "transfer/mpi/transport.h"

namespace netloader {
namespace {

// Implements RelayFeed beside Server so that RelayFeedOf finds a relay's feed by a cross-cast;
// the feed is the RelayState's. Thread-safe, as Server and RelayFeed promise: each part guards
// itself (see their headers).
class ServerImpl final : public Server, public internal::RelayFeed {
 public:
  // Without `manifest`, a relay (Server::StartRelay): nothing is served until its own load adopts
  // a source's manifest. Starts the control thread, last.
  ServerImpl(ServerOptions options, ModelView model, std::shared_ptr<transfer::Transport> transport,
             std::unique_ptr<serving::ControlSocket> socket, std::optional<Manifest> manifest)
      : options_(std::move(options)),
        model_(std::move(model)),
        transport_(std::move(transport)),
        content_(model_, std::move(manifest), options_.chunk_bytes, options_.stall_timeout,
                 socket->endpoint()),
        rings_(stats_),
        control_(options_, model_, *transport_, std::move(socket), content_, rings_, stats_) {
    control_.Start();
  }

  // Publishes this server in the registry (PeerOptions::registry), once it serves.
  Status Publish() {
    if (options_.registry.empty()) return Status::Ok();
    const std::string& at = endpoint();
    if (at.find("://0.0.0.0:") != std::string::npos || at.find("://*:") != std::string::npos ||
        at.find("://[::]:") != std::string::npos) {
      return Status(StatusCode::kInvalidArgument,
                    "a server in a registry must listen on an address its clients can reach, or "
                    "advertise one (ServerOptions::advertise, --advertise), not every interface "
                    "(" +
                        at + ")");
    }
    // Later processes get larger generations, so a record left by a dead one loses.
    const uint64_t generation =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
    Result<std::unique_ptr<registry::Publisher>> publisher =
        registry::Publisher::Start(options_.registry, options_.registry_ttl,
                                   [this, generation] { return Record(generation); });
    if (!publisher.ok()) return publisher.status();
    std::lock_guard<std::mutex> lock(publisher_mu_);
    publisher_ = std::move(*publisher);
    return Status::Ok();
  }

  ~ServerImpl() override { Stop(); }

  std::string endpoint() const override { return control_.endpoint(); }
  std::string rendezvous_uri() const override { return transport_->rendezvous(); }
  ServerStats stats() const override { return stats_.Get(); }
  void Stop() override {
    {
      // First out of the registry, so that no new client is sent here.
      std::lock_guard<std::mutex> lock(publisher_mu_);
      if (publisher_) publisher_->Stop();
    }
    control_.Stop();
  }
  Status MarkLoaded() override { return content_.MarkLoaded(); }

  // internal::RelayFeed, for a Load filling this relay's model (ClientOptions::relay).
  Status Adopt(const Manifest& manifest) override { return content_.Adopt(manifest); }
  void Held(uint64_t begin, uint64_t end) override { content_.Held(begin, end); }
  void LoadEnded(const Status& status) override { content_.LoadEnded(status); }
  Result<bool> ClaimInRegistry(const std::string& name) override {
    std::lock_guard<std::mutex> lock(publisher_mu_);
    if (!publisher_) {
      return Status(StatusCode::kUnavailable, "the relay publishes in no registry");
    }
    return publisher_->Claim(name, endpoint());
  }
  const ModelView& relayed_model() const override { return model_; }
  bool relaying() const override { return content_.relay(); }

 private:
  // Declared in the order they depend on each other: the control loop, which runs the sessions
  // that use the rest, is destroyed first (after Stop).
  // What this server publishes now: the facts a client chooses its sources by.
  registry::Record Record(uint64_t generation) const {
    const serving::RelayState::Snapshot content = content_.Now();
    const ServerStats stats = stats_.Get();
    registry::Record r;
    r.endpoint = endpoint();
    r.generation = generation;
    r.model_id = options_.model_id;
    r.partition = options_.partition;
    r.table_digest = content_.table_digest();
    r.bytes_total = model_.total_bytes();
    r.bytes_held = content.complete ? r.bytes_total : content.bytes_held;
    r.state = content.complete           ? "ready"
              : !content.failure.empty() ? "failed"
              : content.whole            ? "loading"
                                         : "waiting";
    if ((content.complete || content.whole) && !Healthy()) r.state = "unavailable";
    r.free_slots = std::max(0, options_.max_concurrent_transfers - stats.active_transfers);
    r.topology = options_.topology;
    return r;
  }

  // The data plane's health for the registry, asked at most every 2 s: each ask may probe the
  // rendezvous (a TCP connect) or ask the MPI helper.
  bool Healthy() const {
    const auto now = Clock::now();
    if (now - health_asked_ >= std::chrono::seconds(2)) {
      healthy_ = transport_->health().ok();
      health_asked_ = now;
    }
    return healthy_;
  }

  const ServerOptions options_;
  const ModelView model_;
  const std::shared_ptr<transfer::Transport> transport_;
  serving::StatsCounter stats_;
  serving::RelayState content_;
  serving::RingPool rings_;
  serving::ControlLoop control_;
  mutable Clock::time_point health_asked_{};  // the publisher's thread only
  mutable bool healthy_ = true;
  std::mutex publisher_mu_;
  std::unique_ptr<registry::Publisher> publisher_;  // guarded by publisher_mu_
};

Status ValidateOptions(const ServerOptions& options) {
  if (options.max_concurrent_transfers < 1) {
    return Status(StatusCode::kInvalidArgument, "max_concurrent_transfers must be >= 1");
  }
  if (options.chunk_bytes < kMinChunkBytes || options.chunk_bytes > kMaxChunkBytes) {
    return Status(StatusCode::kInvalidArgument, "chunk_bytes must be within [" +
                                                    std::to_string(kMinChunkBytes) + ", " +
                                                    std::to_string(kMaxChunkBytes) + "], got " +
                                                    std::to_string(options.chunk_bytes));
  }
  if (options.window < 1) return Status(StatusCode::kInvalidArgument, "window must be >= 1");
  if (options.fanout < 0) return Status(StatusCode::kInvalidArgument, "fanout must be >= 0");
  if (options.listen.empty()) return Status(StatusCode::kInvalidArgument, "listen is empty");
  if (options.advertise.find_first_of("/[] \t") != std::string::npos) {
    return Status(StatusCode::kInvalidArgument,
                  "advertise must be a host name or address, without scheme, port or brackets: '" +
                      options.advertise + "'");
  }
  if (!options.advertise.empty() && options.listen.compare(0, 6, "tcp://") != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "advertise needs a tcp:// listen endpoint, got '" + options.listen + "'");
  }
  if (options.heartbeat_timeout.count() != 0 && options.heartbeat_timeout < kMinHeartbeatTimeout) {
    // Clients beat once a second (PROTOCOL.md, section 4.6).
    return Status(StatusCode::kInvalidArgument, "heartbeat_timeout must be 0 (never) or >= " +
                                                    std::to_string(kMinHeartbeatTimeout.count()) +
                                                    " ms");
  }
  Status secret = ValidateSecret(options.secret);
  if (!secret.ok()) return secret.WithContext("ServerOptions::secret");
  return ValidatePartition(options.partition);
}

}  // namespace

Server::~Server() = default;

namespace internal {

Result<std::unique_ptr<Server>> StartServer(ServerOptions options, ModelView model,
                                            const std::shared_ptr<transfer::DataPlane>& plane,
                                            bool relay) {
  Status status = ValidateOptions(options);
  if (status.ok()) status = ValidateModelView(model);
  if (status.ok() && relay && plane->one_rendezvous_per_process() &&
      options.transport.rendezvous_uri.empty() && plane->bound_rendezvous().empty()) {
    status = Status(StatusCode::kInvalidArgument,
                    "a relay needs the shared MPI rendezvous of the instances it loads from and "
                    "serves (TransportOptions::rendezvous_uri): it starts MPI before it hears "
                    "from its source, so it cannot adopt the source's own");
  }
  if (!status.ok()) return status;
  Result<std::shared_ptr<transfer::Transport>> transport = plane->StartServing();
  if (!transport.ok()) return transport.status();
  std::optional<Manifest> manifest;
  if (!relay) {
    const auto start = Clock::now();
    manifest = BuildManifest(model, options.chunk_bytes);
    Log().debug("digests of {} tensors ({} bytes, {} chunks) computed in {:.3f} s",
                model.tensors.size(), model.total_bytes(), manifest->chunk_digests.size(),
                SecondsSince(start));
  }
  Result<std::unique_ptr<serving::ControlSocket>> socket = serving::ControlSocket::Bind(options);
  if (!socket.ok()) return socket.status();
  auto server =
      std::make_unique<ServerImpl>(std::move(options), std::move(model), std::move(*transport),
                                   std::move(*socket), std::move(manifest));
  status = server->Publish();
  if (!status.ok()) return status.WithContext("PeerOptions::registry");
  return std::unique_ptr<Server>(std::move(server));
}

}  // namespace internal

Result<std::unique_ptr<Server>> Server::Start(ServerOptions options, ModelView model) {
  const auto plane = transfer::MakeMpiDataPlane(options.transport);
  return internal::StartServer(std::move(options), std::move(model), plane);
}

Result<std::unique_ptr<Server>> Server::StartRelay(ServerOptions options, ModelView destination) {
  const auto plane = transfer::MakeMpiDataPlane(options.transport);
  return internal::StartServer(std::move(options), std::move(destination), plane, true);
}

}  // namespace netloader
