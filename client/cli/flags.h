#pragma once

// netloader-client's command line: every flag, bound to the options it fills. The defaults shown
// by --help are the options structs' own.

#include <CLI/CLI.hpp>
#include <string>

#include "netloader/client.h"
#include "netloader/server.h"
#include "server/cli/cli_common.h"

namespace netloader::cli {

struct ClientFlags {
  std::string model_path;
  std::string output_dir;
  bool overwrite = false;
  bool verify_only = false;
  bool skip_output_check = false;
  std::string delta_dir;
  std::string status_endpoint;
  ClientOptions options;
  // --serve: the relay's options (listen, max clients, chunk size, fan-out).
  ServerOptions serving;
  std::string serve_endpoint_file;
  CommonFlags common;
  TestHooks testing;

  // Declares every flag on `app`.
  void Add(CLI::App& app);
  bool status() const { return !status_flag_->empty(); }
  bool relaying() const { return !serve_flag_->empty(); }
  // After parsing: the seconds flags into the options, the common flags (and the secret file)
  // into `options`, and, with --serve, into `serving`. Errors: the secret file's.
  Status Apply();

 private:
  double register_timeout_s = ToSeconds(ClientOptions().register_timeout);
  double busy_timeout_s = ToSeconds(ClientOptions().busy_timeout);
  double cold_start_wait_s = ToSeconds(ClientOptions().cold_start_wait);
  uint64_t serve_chunk_mib = ServerOptions().chunk_bytes >> 20;
  CLI::Option* status_flag_ = nullptr;
  CLI::Option* serve_flag_ = nullptr;
};

}  // namespace netloader::cli
