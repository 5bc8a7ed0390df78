#include "netloader/src/metrics/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "netloader/fingerprint.h"
#include "netloader/metrics.h"

namespace netloader::metrics {
namespace {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

// Seconds: from a 1 ms phase to a load of a 400 GB model.
const Histogram::BucketBoundaries& Buckets() {
  static const Histogram::BucketBoundaries buckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                      0.25,  0.5,    1,     2.5,  5,     10,   25,
                                                      50,    100,    250,   500,  1000};
  return buckets;
}

// Every metric, registered once, in base units, with no label that names a process.
struct Metrics {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<Counter>& sent =
      prometheus::BuildCounter()
          .Name("netloader_sent_bytes_total")
          .Help(
              "Bytes of weights sent, by role: a server over loaded weights, or a relay (an "
              "instance serving while it loads, and after)")
          .Register(*registry);
  Counter& sent_server = sent.Add({{"role", "server"}});
  Counter& sent_relay = sent.Add({{"role", "relay"}});
  Counter& received = prometheus::BuildCounter()
                          .Name("netloader_received_bytes_total")
                          .Help("Bytes of weights received by loads, failed transfers included")
                          .Register(*registry)
                          .Add({});
  Counter& verification_failures =
      prometheus::BuildCounter()
          .Name("netloader_chunk_verification_failures_total")
          .Help("Chunks received whose digest did not match the source's")
          .Register(*registry)
          .Add({});
  prometheus::Family<Counter>& sessions = prometheus::BuildCounter()
                                              .Name("netloader_sessions_total")
                                              .Help("Server sessions ended, by result")
                                              .Register(*registry);
  Counter& sessions_served = sessions.Add({{"result", "served"}});
  Counter& sessions_failed = sessions.Add({{"result", "failed"}});
  prometheus::Family<Counter>& redirects =
      prometheus::BuildCounter()
          .Name("netloader_redirects_total")
          .Help("Redirects to relays: sent by servers at their fan-out, followed by loads")
          .Register(*registry);
  Counter& redirects_sent = redirects.Add({{"direction", "sent"}});
  Counter& redirects_followed = redirects.Add({{"direction", "followed"}});
  prometheus::Family<Counter>& loads = prometheus::BuildCounter()
                                           .Name("netloader_loads_total")
                                           .Help("Loads ended, by result (OK or a status code)")
                                           .Register(*registry);
  Histogram& load_seconds = prometheus::BuildHistogram()
                                .Name("netloader_load_duration_seconds")
                                .Help(
                                    "Duration of loads that succeeded, first source to last "
                                    "chunk verified")
                                .Register(*registry)
                                .Add({}, Buckets());
  prometheus::Family<Histogram>& phases =
      prometheus::BuildHistogram()
          .Name("netloader_load_phase_duration_seconds")
          .Help(
              "Where a successful load's last transfer spent its time: register (until "
              "Accept), transport (waiting for MPI), transfer (every chunk verified)")
          .Register(*registry);
  Histogram& phase_register = phases.Add({{"phase", "register"}}, Buckets());
  Histogram& phase_transport = phases.Add({{"phase", "transport"}}, Buckets());
  Histogram& phase_transfer = phases.Add({{"phase", "transfer"}}, Buckets());
  prometheus::Family<Counter>& fallbacks =
      prometheus::BuildCounter()
          .Name("netloader_fallbacks_total")
          .Help("Engine loads that fell back to disk, by reason")
          .Register(*registry);
  prometheus::Family<Counter>& registry_calls =
      prometheus::BuildCounter()
          .Name("netloader_registry_operations_total")
          .Help("Calls to the etcd registry, by operation and result")
          .Register(*registry);
  Gauge& relay_children = prometheus::BuildGauge()
                              .Name("netloader_relay_children")
                              .Help("Relays streaming from this process's servers now")
                              .Register(*registry)
                              .Add({});

  Metrics() {
    prometheus::BuildGauge()
        .Name("netloader_build_info")
        .Help("The netloader build: always 1")
        .Register(*registry)
        .Add({{"version", NETLOADER_VERSION},
              {"protocol_version", std::to_string(kProtocolVersion)}})
        .Set(1);
  }
};

Metrics& M() {
  static Metrics* metrics = new Metrics;  // never destroyed: threads may count at exit
  return *metrics;
}

struct Endpoint {
  std::mutex mu;
  std::unique_ptr<prometheus::Exposer> exposer;  // guarded by mu
  std::string listen;                            // as asked
  std::string bound;                             // HOST:PORT
};

Endpoint& Served() {
  static Endpoint* endpoint = new Endpoint;
  return *endpoint;
}

}  // namespace

void BytesSent(Role role, uint64_t bytes) {
  (role == Role::kServer ? M().sent_server : M().sent_relay).Increment(static_cast<double>(bytes));
}
void BytesReceived(uint64_t bytes) { M().received.Increment(static_cast<double>(bytes)); }
void ChunkVerificationFailed() { M().verification_failures.Increment(); }
void SessionEnded(bool served) { (served ? M().sessions_served : M().sessions_failed).Increment(); }
void RedirectSent() { M().redirects_sent.Increment(); }
void RedirectFollowed() { M().redirects_followed.Increment(); }

void LoadEnded(const Status& status, double seconds, double register_seconds,
               double transport_seconds, double transfer_seconds) {
  M().loads.Add({{"result", status.ok() ? "OK" : StatusCodeName(status.code())}}).Increment();
  if (!status.ok()) return;
  M().load_seconds.Observe(seconds);
  M().phase_register.Observe(register_seconds);
  M().phase_transport.Observe(transport_seconds);
  M().phase_transfer.Observe(transfer_seconds);
}

void RegistryCall(const char* op, bool ok) {
  M().registry_calls.Add({{"op", op}, {"result", ok ? "ok" : "error"}}).Increment();
}

void RelayChildren(int delta) { M().relay_children.Increment(delta); }

}  // namespace netloader::metrics

namespace netloader {

Result<std::string> ServeMetrics(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size() ||
      listen.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    return Status(StatusCode::kInvalidArgument,
                  "metrics endpoint '" + listen + "' is not HOST:PORT");
  }
  metrics::Endpoint& served = metrics::Served();
  std::lock_guard<std::mutex> lock(served.mu);
  if (served.exposer) {
    if (listen == served.listen || listen == served.bound || listen.substr(colon + 1) == "0") {
      return served.bound;
    }
    return Status(StatusCode::kInvalidArgument, "metrics are already served at " + served.bound +
                                                    "; one endpoint per process, not " + listen);
  }
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(listen, 2);
    exposer->RegisterCollectable(metrics::M().registry);
    const std::vector<int> ports = exposer->GetListeningPorts();
    if (ports.empty()) {
      return Status(StatusCode::kUnavailable, "metrics endpoint " + listen + " did not bind");
    }
    served.bound = listen.substr(0, colon) + ":" + std::to_string(ports.front());
    served.listen = listen;
    served.exposer = std::move(exposer);
  } catch (const std::exception& e) {
    return Status(StatusCode::kUnavailable, "cannot serve metrics at " + listen + ": " + e.what());
  }
  return served.bound;
}

void CountFallback(const std::string& reason) {
  static const std::set<std::string> known = [] {
    std::set<std::string> names = {"no_source", "no_tensors"};
    for (int c = 0; c <= static_cast<int>(StatusCode::kInternal); ++c) {
      names.insert(StatusCodeName(static_cast<StatusCode>(c)));
    }
    return names;
  }();
  metrics::M().fallbacks.Add({{"reason", known.count(reason) ? reason : "other"}}).Increment();
}

}  // namespace netloader
