#include "netloader/src/registry/publisher.h"

#include <algorithm>

#include "netloader/src/base/log.h"

namespace netloader::registry {
namespace {

constexpr std::chrono::seconds kCallTimeout{2};  // one etcd call, at most

}  // namespace

Result<std::unique_ptr<Publisher>> Publisher::Start(const std::string& url,
                                                    std::chrono::seconds ttl,
                                                    std::function<Record()> snapshot) {
  Result<Etcd> etcd = Etcd::Parse(url);
  if (!etcd.ok()) return etcd.status();
  if (ttl < std::chrono::seconds(2)) {
    return Status(StatusCode::kInvalidArgument,
                  "registry TTL must be at least 2 s, got " + std::to_string(ttl.count()));
  }
  return std::unique_ptr<Publisher>(new Publisher(std::move(*etcd), ttl, std::move(snapshot)));
}

Publisher::Publisher(Etcd etcd, std::chrono::seconds ttl, std::function<Record()> snapshot)
    : etcd_(std::move(etcd)), ttl_(ttl), snapshot_(std::move(snapshot)) {
  thread_ = std::thread([this] { Run(); });
}

Publisher::~Publisher() { Stop(); }

void Publisher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  std::lock_guard<std::mutex> lock(lease_mu_);
  if (lease_ != 0) (void)etcd_.Revoke(lease_, Clock::now() + std::chrono::seconds(1));
}

void Publisher::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    Status round;
    try {
      std::lock_guard<std::mutex> leased(lease_mu_);
      round = Round();
    } catch (const std::exception& e) {  // nothing may end the server from this thread
      round = Status(StatusCode::kInternal, std::string("publishing failed: ") + e.what());
    }
    Reached(round);
    lock.lock();
    wake_.wait_for(lock, kPublishTick, [this] { return stopping_; });
  }
}

Status Publisher::EnsureLease() {
  if (lease_ != 0) return Status::Ok();
  Result<int64_t> lease = etcd_.Grant(static_cast<int>(ttl_.count()), Clock::now() + kCallTimeout);
  if (!lease.ok()) return lease.status();
  lease_ = *lease;
  published_.clear();
  for (const std::string& name : claimed_) {
    Log().warn("registry: the claim on {} was lost with the lease at {}", name, etcd_.url());
  }
  claimed_.clear();
  renew_at_ = Clock::now() + ttl_ / 3;
  return Status::Ok();
}

Result<bool> Publisher::Claim(const std::string& name, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;  // nothing would keep a new lease alive
  }
  std::lock_guard<std::mutex> lock(lease_mu_);
  if (std::find(claimed_.begin(), claimed_.end(), name) != claimed_.end()) return true;
  Status leased = EnsureLease();
  if (!leased.ok()) return leased;
  Result<bool> won =
      etcd_.PutIfAbsent(etcd_.prefix() + name, value, lease_, Clock::now() + kCallTimeout);
  if (!won.ok()) return won.status();
  if (*won) claimed_.push_back(name);
  return *won;
}

Status Publisher::Round() {
  Status leased = EnsureLease();
  if (!leased.ok()) return leased;
  const Record record = snapshot_();
  const std::string value = ToJson(record);
  if (value != published_) {
    Status put =
        etcd_.Put(RecordKey(etcd_.prefix(), record), value, lease_, Clock::now() + kCallTimeout);
    if (put.code() == StatusCode::kNotFound) {  // the lease expired while etcd was away
      Log().warn("registry: the lease at {} expired; publishing {} again", etcd_.url(),
                 record.endpoint);
      lease_ = 0;
      return Status::Ok();
    }
    if (!put.ok()) return put;
    if (published_.empty()) {
      Log().info("registry: {} published at {} ({} s lease)", record.endpoint, etcd_.url(),
                 ttl_.count());
    }
    published_ = value;
  }
  if (Clock::now() >= renew_at_) {
    Result<int64_t> left = etcd_.KeepAlive(lease_, Clock::now() + kCallTimeout);
    if (!left.ok()) return left.status();
    if (*left == 0) {
      Log().warn("registry: the lease at {} expired; publishing {} again", etcd_.url(),
                 record.endpoint);
      lease_ = 0;
      return Status::Ok();
    }
    renew_at_ = Clock::now() + ttl_ / 3;
  }
  return Status::Ok();
}

void Publisher::Reached(const Status& status) {
  if (!status.ok() && reachable_) {
    Log().warn("registry: {}; still serving, not listed, retrying every {} ms", status.message(),
               kPublishTick.count());
  } else if (status.ok() && !reachable_) {
    Log().info("registry: etcd at {} reachable again", etcd_.url());
  }
  reachable_ = status.ok();
}

}  // namespace netloader::registry
