#pragma once

// Prometheus metrics of what netloader does in this process: servers, relays and loads alike
// (DESIGN.md, "Metrics"; docs/usage.md lists every metric).

#include <string>

#include "netloader/export.h"
#include "netloader/status.h"

namespace netloader {

// Serves this process's netloader metrics, in Prometheus' text format, at
// http://LISTEN/metrics. LISTEN is "HOST:PORT"; port 0 picks a free one. One endpoint per
// process: a later call returns the one already serving when LISTEN is the same (or its port
// is 0), else InvalidArgument. Returns the bound "HOST:PORT". Errors: InvalidArgument (not
// HOST:PORT, or another endpoint already serves), Unavailable (cannot bind).
NETLOADER_EXPORT Result<std::string> ServeMetrics(const std::string& listen);

// An engine that loaded weights from disk instead of through netloader, and why: counts
// netloader_fallbacks_total{reason}. `reason`: "no_source" (none configured for the rank),
// "no_tensors" (a partial load matched none of its tensors), or the failed load's status code
// (StatusCodeName: "Unavailable", "Timeout", ...); anything else counts as "other".
NETLOADER_EXPORT void CountFallback(const std::string& reason);

}  // namespace netloader
