#include "tests/support/fault_transport.h"

namespace netloader::transfer {
namespace {

class FaultyChannel : public Channel {
 public:
  FaultyChannel(std::unique_ptr<Channel> inner, FaultSpec fault)
      : inner_(std::move(inner)), fault_(fault) {}

  Status Send(const ChunkList& chunks, const StreamOptions& options,
              const ChunkCallback& on_sent) override {
    return inner_->Send(chunks, options, on_sent);
  }

  Status Receive(const ChunkList& chunks, const StreamOptions& options,
                 const ChunkCallback& on_received) override {
    return inner_->Receive(chunks, options, [&](size_t i) -> Status {
      if (i == fault_.chunk && fault_.kind == FaultSpec::Kind::kCorrupt) {
        static_cast<unsigned char*>(chunks.spans(i)[0].data)[0] ^= 0x5a;
      }
      if (i == fault_.chunk && fault_.kind == FaultSpec::Kind::kFail) {
        return Status(StatusCode::kTransferFailed,
                      "injected failure at chunk " + std::to_string(i));
      }
      return on_received ? on_received(i) : Status::Ok();
    });
  }

  void Abandon() override { inner_->Abandon(); }

 private:
  std::unique_ptr<Channel> inner_;
  FaultSpec fault_;
};

class FaultyTransport : public Transport {
 public:
  FaultyTransport(std::shared_ptr<Transport> inner, FaultSpec fault)
      : inner_(std::move(inner)), fault_(fault) {}
  std::string rendezvous() const override { return inner_->rendezvous(); }
  Status health() const override { return inner_->health(); }
  Result<std::unique_ptr<Listener>> Listen() override { return inner_->Listen(); }
  Result<std::unique_ptr<Channel>> Connect(const std::string& address, Clock::time_point deadline,
                                           const std::atomic<bool>* cancel) override {
    Result<std::unique_ptr<Channel>> channel = inner_->Connect(address, deadline, cancel);
    if (!channel.ok()) return channel;
    return std::unique_ptr<Channel>(new FaultyChannel(std::move(*channel), fault_));
  }

 private:
  std::shared_ptr<Transport> inner_;
  FaultSpec fault_;
};

}  // namespace

std::shared_ptr<Transport> MakeFaultyTransport(std::shared_ptr<Transport> inner, FaultSpec fault) {
  return std::make_shared<FaultyTransport>(std::move(inner), fault);
}

}  // namespace netloader::transfer
