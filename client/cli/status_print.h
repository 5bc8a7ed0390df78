#pragma once

// netloader-client --status: one StatusRequest to a server, printed for a person or as JSON.

#include <chrono>
#include <string>

namespace netloader::cli {

// Asks `endpoint` and prints its answer on stdout (one JSON object with `json`). Returns the exit
// code: 0 when it answered, else the code for the failure (printed on stderr).
int PrintStatus(const std::string& endpoint, const std::string& secret,
                std::chrono::milliseconds timeout, bool json);

}  // namespace netloader::cli
