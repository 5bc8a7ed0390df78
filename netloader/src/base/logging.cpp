#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>

#include <cstdio>
#include <memory>
#include <mutex>

#include "netloader/logging.h"
#include "netloader/src/base/log.h"

namespace netloader {
namespace {

LogLevel FromSpdlog(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return LogLevel::kTrace;
    case spdlog::level::debug:
      return LogLevel::kDebug;
    case spdlog::level::info:
      return LogLevel::kInfo;
    case spdlog::level::warn:
      return LogLevel::kWarn;
    case spdlog::level::err:
    case spdlog::level::critical:
      return LogLevel::kError;
    default:
      return LogLevel::kOff;
  }
}

spdlog::level::level_enum ToSpdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return spdlog::level::trace;
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
    case LogLevel::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

// One sink that forwards to the host's LogSink when set, else writes to stderr. base_sink's mutex
// serialises sink_it_ and guards host_sink_.
class DispatchSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  void SetHostSink(LogSink host_sink) {
    std::lock_guard<std::mutex> lock(mutex_);
    host_sink_ = std::move(host_sink);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (host_sink_) {
      host_sink_(FromSpdlog(msg.level), std::string_view(msg.payload.data(), msg.payload.size()));
      return;
    }
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    std::fwrite(formatted.data(), 1, formatted.size(), stderr);
  }
  void flush_() override { std::fflush(stderr); }

 private:
  LogSink host_sink_;
};

struct LoggerHolder {
  std::shared_ptr<DispatchSink> sink = std::make_shared<DispatchSink>();
  spdlog::logger logger{"netloader", sink};
  LoggerHolder() {
    logger.set_pattern("%Y-%m-%d %H:%M:%S.%e [netloader] [%l] %v");
    logger.set_level(spdlog::level::info);
    logger.flush_on(spdlog::level::warn);
  }
};

LoggerHolder& Holder() {
  static LoggerHolder* holder = new LoggerHolder();  // outlives threads still logging at exit
  return *holder;
}

}  // namespace

spdlog::logger& Log() { return Holder().logger; }

void SetLogLevel(LogLevel level) { Holder().logger.set_level(ToSpdlog(level)); }

void SetLogSink(LogSink sink) { Holder().sink->SetHostSink(std::move(sink)); }

}  // namespace netloader
