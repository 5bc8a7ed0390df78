#pragma once

#include <spdlog/spdlog.h>

namespace netloader {

// netloader's own logger: never spdlog's default logger, never registered globally, so a host
// that uses spdlog itself is unaffected. Routed to stderr or to the host's LogSink.
spdlog::logger& Log();

}  // namespace netloader
