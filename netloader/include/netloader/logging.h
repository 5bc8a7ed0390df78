#pragma once

#include <functional>
#include <string_view>

#include "netloader/export.h"

namespace netloader {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Receives every log line netloader emits at or above the current level. Called from
// netloader's threads; must be thread-safe and must not call back into netloader.
using LogSink = std::function<void(LogLevel level, std::string_view message)>;

// netloader logs through its own logger and never touches the host's logging setup.
// By default lines at kInfo and above go to stderr. Both calls are thread-safe.
NETLOADER_EXPORT void SetLogLevel(LogLevel level);
// Routes netloader's log lines to `sink`; an empty sink restores the stderr default.
NETLOADER_EXPORT void SetLogSink(LogSink sink);

}  // namespace netloader
