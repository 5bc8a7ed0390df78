#include "client/cli/status_print.h"

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "netloader/client.h"
#include "server/cli/cli_common.h"

namespace netloader::cli {

int PrintStatus(const std::string& endpoint, const std::string& secret,
                std::chrono::milliseconds timeout, bool json) {
  Result<SourceStatus> status = QueryStatus(endpoint, secret, timeout);
  if (!status.ok()) {
    std::fprintf(stderr, "netloader-client: %s\n", status.status().ToString().c_str());
    const int code = ExitCodeFor(status.status().code());
    return code == kExitBadModel ? kExitFailure : code;
  }
  const SourceStatus& s = *status;
  if (json) {
    std::cout << nlohmann::json{{"endpoint", endpoint},
                                {"state", s.state},
                                {"failure", s.failure},
                                {"model_id", s.model_id},
                                {"tp_size", s.partition.tp_size},
                                {"tp_rank", s.partition.tp_rank},
                                {"pp_size", s.partition.pp_size},
                                {"pp_rank", s.partition.pp_rank},
                                {"layout_key", s.partition.layout_key},
                                {"table_digest", s.table_digest},
                                {"bytes_total", s.bytes_total},
                                {"bytes_held", s.bytes_held},
                                {"sessions", s.sessions},
                                {"max_sessions", s.max_sessions},
                                {"fanout", s.fanout},
                                {"children", s.children},
                                {"bytes_sent", s.bytes_sent},
                                {"clients_served", s.clients_served},
                                {"clients_failed", s.clients_failed},
                                {"redirected", s.redirected}}
                     .dump()
              << std::endl;
    return kExitOk;
  }
  std::string children;
  for (const std::string& c : s.children) children += (children.empty() ? "" : ", ") + c;
  std::printf(
      "%s: %s%s%s\n  model %s, table %s, tp %d/%d, pp %d/%d%s\n  holds %s of %s (%.1f %%)\n"
      "  %d of %d sessions, fan-out %d; children: %s\n"
      "  served %llu clients (%llu failed), %s sent, %llu redirected\n",
      endpoint.c_str(), s.state.c_str(), s.failure.empty() ? "" : ": ", s.failure.c_str(),
      s.model_id.empty() ? "(no id)" : s.model_id.c_str(), s.table_digest.c_str(),
      s.partition.tp_rank, s.partition.tp_size, s.partition.pp_rank, s.partition.pp_size,
      s.partition.layout_key.empty() ? "" : (", layout " + s.partition.layout_key).c_str(),
      HumanBytes(s.bytes_held).c_str(), HumanBytes(s.bytes_total).c_str(),
      s.bytes_total ? 100.0 * s.bytes_held / s.bytes_total : 100.0, s.sessions, s.max_sessions,
      s.fanout, children.empty() ? "none" : children.c_str(),
      static_cast<unsigned long long>(s.clients_served),
      static_cast<unsigned long long>(s.clients_failed), HumanBytes(s.bytes_sent).c_str(),
      static_cast<unsigned long long>(s.redirected));
  return kExitOk;
}

}  // namespace netloader::cli
