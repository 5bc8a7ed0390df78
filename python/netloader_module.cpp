// The `netloader._netloader` extension: the C++ library's Load, Server and checkpoint layout
// behind a small pybind11 surface. Tensors arrive from Python as plain descriptions (name,
// safetensors dtype, shape, address, byte size) made by netloader/__init__.py from torch tensors
// or numpy arrays, so the memory is used where it lies: nothing is copied through Python. Every
// blocking call releases the GIL.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "netloader/client.h"
#include "netloader/fingerprint.h"
#include "netloader/loader_config.h"
#include "netloader/logging.h"
#include "netloader/metrics.h"
#include "netloader/safetensors.h"
#include "netloader/secret.h"
#include "netloader/server.h"
#include "netloader/transport.h"

namespace py = pybind11;
using namespace netloader;

namespace {

// One exception class per status code, all derived from netloader.Error.
std::map<StatusCode, py::object>& Exceptions() {
  static auto* classes = new std::map<StatusCode, py::object>;
  return *classes;
}

// The fields a refusal named as differing: (field, server's value, client's value) each.
py::list Differences(const Status& status) {
  py::list out;
  for (const FieldDiff& d : status.diffs()) {
    out.append(py::make_tuple(d.field, d.server_value, d.client_value));
  }
  return out;
}

// Raises the status's exception class with the message; the instance also carries `code` (the
// status code's name), `message` and `differences` (see Differences; empty unless the refusal
// named differing fields).
[[noreturn]] void Raise(const Status& status) {
  const auto it = Exceptions().find(status.code());
  py::object cls = it != Exceptions().end()
                       ? it->second
                       : py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
  py::object error = cls(status.message());
  error.attr("code") = std::string(StatusCodeName(status.code()));
  error.attr("message") = status.message();
  error.attr("differences") = Differences(status);
  PyErr_SetObject(cls.ptr(), error.ptr());
  throw py::error_already_set();
}

template <typename T>
T Take(Result<T> result) {
  if (!result.ok()) Raise(result.status());
  return std::move(result).value();
}

// (name, dtype, shape, address, nbytes) tuples, in storage order.
using TensorTuple = std::tuple<std::string, std::string, std::vector<int64_t>, uintptr_t, uint64_t>;

ModelView ToView(const std::vector<TensorTuple>& tensors) {
  ModelView view;
  for (const auto& [name, dtype, shape, address, nbytes] : tensors) {
    std::optional<DType> parsed = ParseDType(dtype);
    if (!parsed)
      Raise(Status(StatusCode::kInvalidArgument, "tensor '" + name + "': dtype " + dtype));
    view.tensors.push_back({name, *parsed, shape, reinterpret_cast<void*>(address), nbytes});
  }
  return view;
}

Partition ToPartition(const py::dict& p) {
  Partition partition;
  if (p.contains("tp_size")) partition.tp_size = p["tp_size"].cast<int>();
  if (p.contains("tp_rank")) partition.tp_rank = p["tp_rank"].cast<int>();
  if (p.contains("pp_size")) partition.pp_size = p["pp_size"].cast<int>();
  if (p.contains("pp_rank")) partition.pp_rank = p["pp_rank"].cast<int>();
  if (p.contains("layout_key")) partition.layout_key = p["layout_key"].cast<std::string>();
  return partition;
}

// ToPartition's inverse: every field, as netloader.Server/load take `partition`.
py::dict PartitionDict(const Partition& p) {
  return py::dict(py::arg("tp_size") = p.tp_size, py::arg("tp_rank") = p.tp_rank,
                  py::arg("pp_size") = p.pp_size, py::arg("pp_rank") = p.pp_rank,
                  py::arg("layout_key") = p.layout_key);
}

// A string option the Python API leaves unset with None ("" in C++).
py::object NoneIfEmpty(const std::string& s) {
  return s.empty() ? py::object(py::none()) : py::object(py::str(s));
}

// The options both sides share, from keyword arguments already checked by __init__.py.
void ApplyPeer(const py::dict& o, PeerOptions& options) {
  if (o.contains("model_id")) options.model_id = o["model_id"].cast<std::string>();
  if (o.contains("partition")) options.partition = ToPartition(o["partition"].cast<py::dict>());
  if (o.contains("window")) options.window = o["window"].cast<int>();
  if (o.contains("connect_timeout"))
    options.connect_timeout = FromSeconds(o["connect_timeout"].cast<double>());
  if (o.contains("stall_timeout"))
    options.stall_timeout = FromSeconds(o["stall_timeout"].cast<double>());
  if (o.contains("heartbeat_timeout")) {
    options.heartbeat_timeout = FromSeconds(o["heartbeat_timeout"].cast<double>());
  }
  if (o.contains("secret")) options.secret = o["secret"].cast<std::string>();
  if (o.contains("rendezvous"))
    options.transport.rendezvous_uri = o["rendezvous"].cast<std::string>();
  if (o.contains("interface")) options.transport.interface = o["interface"].cast<std::string>();
  if (o.contains("mpi_helpers")) options.transport.mpi_helpers = o["mpi_helpers"].cast<bool>();
  if (o.contains("registry")) options.registry = o["registry"].cast<std::string>();
  if (o.contains("topology")) options.topology = o["topology"].cast<std::string>();
}

py::dict StatsToDict(const LoadStats& s) {
  py::list attempts;
  for (const SourceAttempt& a : s.attempts) {
    attempts.append(py::dict(py::arg("source") = a.source, py::arg("status") = a.status.ToString(),
                             py::arg("bytes") = a.bytes));
  }
  return py::dict(
      py::arg("source") = s.source, py::arg("bytes") = s.bytes,
      py::arg("bytes_received") = s.bytes_received, py::arg("bytes_reused") = s.bytes_reused,
      py::arg("tensors") = s.tensors, py::arg("chunks") = s.chunks, py::arg("seconds") = s.seconds,
      py::arg("gbps") = s.gbps, py::arg("transfer_seconds") = s.transfer_seconds,
      py::arg("transfer_gbps") = s.transfer_gbps, py::arg("attempts") = attempts,
      py::arg("tensor_names") = s.tensor_names, py::arg("tensor_digests") = s.tensor_digests);
}

// A running server over tensors the Python object keeps alive.
class PyServer {
 public:
  // `relay`: serves while the tensors are being loaded (Server::StartRelay); the load given this
  // server (load(..., relay=)) feeds it.
  PyServer(const std::vector<TensorTuple>& tensors, const py::dict& o, bool relay) {
    const ModelView view = ToView(tensors);
    ServerOptions options;
    ApplyPeer(o, options);
    if (o.contains("listen")) options.listen = o["listen"].cast<std::string>();
    if (o.contains("advertise")) options.advertise = o["advertise"].cast<std::string>();
    if (o.contains("max_clients")) options.max_concurrent_transfers = o["max_clients"].cast<int>();
    if (o.contains("chunk_bytes")) options.chunk_bytes = o["chunk_bytes"].cast<uint64_t>();
    if (o.contains("fanout")) options.fanout = o["fanout"].cast<int>();
    if (o.contains("registry_ttl")) {
      options.registry_ttl = std::chrono::seconds(o["registry_ttl"].cast<int>());
    }
    Result<std::unique_ptr<Server>> started = Status(StatusCode::kInternal, "not run");
    {
      py::gil_scoped_release released;
      started = relay ? Server::StartRelay(options, view) : Server::Start(options, view);
    }
    server_ = Take(std::move(started));
  }
  Server* get() const { return server_.get(); }
  void mark_loaded() {
    Status status;
    {
      py::gil_scoped_release released;
      status = server_->MarkLoaded();
    }
    if (!status.ok()) Raise(status);
  }
  std::string endpoint() const { return server_->endpoint(); }
  py::dict stats() const {
    const ServerStats s = server_->stats();
    return py::dict(
        py::arg("clients_served") = s.clients_served, py::arg("clients_failed") = s.clients_failed,
        py::arg("refused") = s.refused, py::arg("busy") = s.busy,
        py::arg("redirected") = s.redirected, py::arg("unauthenticated") = s.unauthenticated,
        py::arg("bytes_sent") = s.bytes_sent, py::arg("active_transfers") = s.active_transfers);
  }
  void stop() {
    py::gil_scoped_release released;
    server_->Stop();
  }

 private:
  std::unique_ptr<Server> server_;
};

// netloader's log lines, queued by the C++ sink (on whatever thread logs, without the GIL: a
// sink that took the GIL could deadlock against a caller holding it) until Python takes them
// (netloader/__init__.py hands them to the `logging` module).
class LogQueue {
 public:
  static constexpr size_t kMaxLines = 10000;
  void Push(LogLevel level, std::string_view message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (lines_.size() >= kMaxLines) {
      ++dropped_;
      return;
    }
    lines_.emplace_back(static_cast<int>(level), std::string(message));
    ready_.notify_all();
  }
  // Waits up to `seconds` for a line to be queued (or for Close); true if one is.
  bool Wait(double seconds) {
    std::unique_lock<std::mutex> lock(mu_);
    return ready_.wait_for(lock, std::chrono::duration<double>(seconds), [this] {
      return !lines_.empty() || closed_;
    }) && !lines_.empty();
  }
  // Takes every queued line, and a note of any dropped.
  std::vector<std::pair<int, std::string>> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::pair<int, std::string>> out(std::make_move_iterator(lines_.begin()),
                                                 std::make_move_iterator(lines_.end()));
    lines_.clear();
    if (dropped_ > 0) {
      out.emplace_back(static_cast<int>(LogLevel::kWarn),
                       std::to_string(dropped_) + " log lines dropped (Python took none)");
      dropped_ = 0;
    }
    return out;
  }
  // Ends every Wait at once, and every later one (the interpreter is exiting: a thread still
  // waiting there would be stopped when it takes the GIL back, which C++ code must not see).
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    ready_.notify_all();
  }
  bool closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

 private:
  std::mutex mu_;
  std::condition_variable ready_;
  bool closed_ = false;
  std::deque<std::pair<int, std::string>> lines_;
  uint64_t dropped_ = 0;
};

LogQueue& Logs() {
  static auto* queue = new LogQueue;  // never destroyed: netloader's threads may log at exit
  return *queue;
}

// Runs `call` on a thread of its own and waits for it without the GIL, looking every 50 ms at
// Python's signal handlers (Ctrl-C) and at `cancel_event` (any object with is_set(), e.g. a
// threading.Event). Either sets `cancel`, which `call` must heed; a signal's exception
// (KeyboardInterrupt) is raised once `call` has returned, so nothing still uses the tensors.
template <typename T>
T RunCancellable(std::function<T()> call, std::atomic<bool>& cancel,
                 const py::object& cancel_event) {
  std::packaged_task<T()> task(std::move(call));
  std::future<T> done = task.get_future();
  std::thread worker(std::move(task));
  std::optional<py::error_already_set> interrupted;
  while (true) {
    {
      py::gil_scoped_release released;
      if (done.wait_for(std::chrono::milliseconds(50)) == std::future_status::ready) break;
    }
    if (cancel) continue;
    if (PyErr_CheckSignals() != 0) {
      interrupted.emplace();  // takes the pending exception
      cancel = true;
      continue;
    }
    try {
      if (!cancel_event.is_none() && cancel_event.attr("is_set")().cast<bool>()) cancel = true;
    } catch (py::error_already_set& e) {
      interrupted.emplace(std::move(e));
      cancel = true;
    }
  }
  worker.join();
  if (interrupted) throw std::move(*interrupted);
  return done.get();
}

py::dict PyLoad(const std::vector<TensorTuple>& tensors, const std::vector<std::string>& sources,
                const py::dict& o, const py::object& cancel_event, const PyServer* relay,
                const py::object& connect_hook) {
  const ModelView view = ToView(tensors);
  ClientOptions options;
  ApplyPeer(o, options);
  options.sources = sources;
  if (o.contains("register_timeout")) {
    options.register_timeout = FromSeconds(o["register_timeout"].cast<double>());
  }
  if (o.contains("busy_timeout"))
    options.busy_timeout = FromSeconds(o["busy_timeout"].cast<double>());
  if (o.contains("cold_start_wait")) {
    options.cold_start_wait = FromSeconds(o["cold_start_wait"].cast<double>());
  }
  if (o.contains("stripe")) options.stripe = o["stripe"].cast<int>();
  if (o.contains("tensors")) options.tensors = o["tensors"].cast<std::vector<std::string>>();
  if (o.contains("destination_filled")) {
    options.destination_filled = o["destination_filled"].cast<bool>();
  }
  if (relay != nullptr) options.relay = relay->get();
  if (!connect_hook.is_none()) {
    // Called on the loading thread, which takes the GIL for it (the caller waits without it). An
    // exception cannot travel through Load: it is printed as unraisable and the load goes on.
    options.connect_hook = [&connect_hook](ConnectEvent event) {
      py::gil_scoped_acquire held;
      try {
        connect_hook(event == ConnectEvent::kBefore ? "before" : "after");
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("netloader connect_hook");
      }
    };
  }
  std::atomic<bool> cancel{false};
  options.cancel = &cancel;
  Result<LoadStats> stats = RunCancellable<Result<LoadStats>>(
      [&] { return netloader::Load(options, view); }, cancel, cancel_event);
  return StatsToDict(Take(std::move(stats)));
}

// The checkpoint's tensors in storage order: (name, dtype, shape, file, offset, nbytes).
std::vector<py::tuple> ReadLayout(const std::string& path) {
  const CheckpointLayout layout = Take(ReadCheckpointLayout(path, LayoutRead::kHeadersOnly));
  std::vector<py::tuple> out;
  for (const ShardLayout& shard : layout.shards) {
    for (const TensorSpec& t : shard.tensors) {
      out.push_back(py::make_tuple(t.name, std::string(DTypeName(t.dtype)), t.shape, shard.path,
                                   t.file_offset, t.size_bytes));
    }
  }
  return out;
}

// Fills the tensors (storage order, as ReadLayout lists them) from the checkpoint's files.
void LoadFromDisk(const std::string& path, const std::vector<TensorTuple>& tensors) {
  const ModelView view = ToView(tensors);
  const CheckpointLayout layout = Take(ReadCheckpointLayout(path));
  Status read;
  {
    py::gil_scoped_release released;
    read = ReadTensors(layout, view);
  }
  if (!read.ok()) Raise(read);
}

// One tensor's bytes in a HostModel, exposed through the buffer protocol; every block holds the
// model, so its memory lives as long as any tensor made from a block (torch.frombuffer and
// numpy.frombuffer keep their buffer's owner).
struct Block {
  std::shared_ptr<HostModel> owner;
  void* data;
  size_t size;
};

// Fresh tensor memory for `layout`'s tensors (HostModel::Allocate: huge pages, populated):
// (name, dtype, shape, block) in storage order.
std::vector<py::tuple> Allocate(const CheckpointLayout& layout) {
  Result<HostModel> allocated = Status(StatusCode::kInternal, "not run");
  {
    py::gil_scoped_release released;
    allocated = HostModel::Allocate(layout);
  }
  auto model = std::make_shared<HostModel>(Take(std::move(allocated)));
  std::vector<py::tuple> out;
  for (const TensorView& t : model->view().tensors) {
    out.push_back(py::make_tuple(t.name, std::string(DTypeName(t.dtype)), t.shape,
                                 Block{model, t.data, t.size_bytes}));
  }
  return out;
}

// What the server at `endpoint` is doing (QueryStatus), as a dict of SourceStatus's fields.
py::dict StatusOf(const std::string& endpoint, const std::string& secret, double timeout) {
  Result<SourceStatus> asked = Status(StatusCode::kInternal, "not run");
  {
    py::gil_scoped_release released;
    asked = QueryStatus(endpoint, secret, FromSeconds(timeout));
  }
  const SourceStatus s = Take(std::move(asked));
  return py::dict(
      py::arg("state") = s.state, py::arg("failure") = s.failure, py::arg("model_id") = s.model_id,
      py::arg("partition") = PartitionDict(s.partition), py::arg("table_digest") = s.table_digest,
      py::arg("bytes_total") = s.bytes_total, py::arg("bytes_held") = s.bytes_held,
      py::arg("sessions") = s.sessions, py::arg("max_sessions") = s.max_sessions,
      py::arg("fanout") = s.fanout, py::arg("children") = s.children,
      py::arg("bytes_sent") = s.bytes_sent, py::arg("clients_served") = s.clients_served,
      py::arg("clients_failed") = s.clients_failed, py::arg("redirected") = s.redirected);
}

// --model-loader-extra-config, parsed by the one parser every engine uses (loader_config.h), as
// a dict of the LoaderConfig fields (timeouts in seconds).
py::dict ParseExtraConfig(const std::string& json_text, int world_size) {
  const LoaderConfig c = Take(ParseLoaderConfig(json_text, world_size));
  return py::dict(
      py::arg("sources") = c.sources, py::arg("listen_port") = c.listen_port,
      py::arg("listen_host") = c.listen_host, py::arg("serve") = c.serve,
      py::arg("metrics_port") =
          c.metrics_port < 0 ? py::object(py::none()) : py::object(py::int_(c.metrics_port)),
      py::arg("model_id") = c.server.model_id, py::arg("output_prefix") = c.output_prefix,
      py::arg("register_timeout") = ToSeconds(c.client.register_timeout),
      py::arg("connect_timeout") = ToSeconds(c.server.connect_timeout),
      py::arg("stall_timeout") = ToSeconds(c.server.stall_timeout),
      py::arg("heartbeat_timeout") = ToSeconds(c.server.heartbeat_timeout),
      py::arg("auth") = c.auth,
      py::arg("secret_file") = c.secret_file.empty() ? DefaultSecretPath() : c.secret_file,
      py::arg("max_clients") = c.server.max_concurrent_transfers,
      py::arg("fanout") = c.server.fanout, py::arg("chunk_mib") = c.server.chunk_bytes >> 20,
      py::arg("window") = c.server.window, py::arg("stripe") = c.client.stripe,
      py::arg("delta_from") = c.delta_from, py::arg("tensors") = c.tensors,
      py::arg("rendezvous") = c.server.transport.rendezvous_uri,
      py::arg("interface") = c.server.transport.interface,
      py::arg("mpi_helpers") = c.server.transport.mpi_helpers,
      py::arg("registry") = NoneIfEmpty(c.server.registry),
      py::arg("topology") = NoneIfEmpty(c.server.topology));
}

// One rank's options from its --model-loader-extra-config (OptionsForRank, as netloader-llama
// derives them): {"server": ..., "load": ..., "relay": bool}, the first two the keyword
// arguments of netloader.Server and netloader.load (no secret: the engine passes its own).
py::dict RankOptionsOf(const std::string& json_text, int world_size, int rank,
                       const py::dict& partition) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    Raise(Status(StatusCode::kInvalidArgument, "rank " + std::to_string(rank) +
                                                   " of an instance of " +
                                                   std::to_string(world_size) + " ranks"));
  }
  const LoaderConfig config = Take(ParseLoaderConfig(json_text, world_size));
  const RankOptions o = OptionsForRank(config, rank, ToPartition(partition), "");
  const ServerOptions& s = o.server;
  const ClientOptions& c = o.client;
  py::dict server(
      py::arg("listen") = s.listen, py::arg("model_id") = NoneIfEmpty(s.model_id),
      py::arg("partition") = PartitionDict(s.partition), py::arg("window") = s.window,
      py::arg("advertise") = NoneIfEmpty(s.advertise),
      py::arg("max_clients") = s.max_concurrent_transfers, py::arg("chunk_bytes") = s.chunk_bytes,
      py::arg("fanout") = s.fanout, py::arg("connect_timeout") = ToSeconds(s.connect_timeout),
      py::arg("stall_timeout") = ToSeconds(s.stall_timeout),
      py::arg("heartbeat_timeout") = ToSeconds(s.heartbeat_timeout),
      py::arg("rendezvous") = NoneIfEmpty(s.transport.rendezvous_uri),
      py::arg("interface") = s.transport.interface,
      py::arg("mpi_helpers") = s.transport.mpi_helpers,
      py::arg("registry") = NoneIfEmpty(s.registry), py::arg("topology") = NoneIfEmpty(s.topology));
  py::dict load(
      py::arg("sources") = c.sources, py::arg("model_id") = NoneIfEmpty(c.model_id),
      py::arg("partition") = PartitionDict(c.partition), py::arg("window") = c.window,
      py::arg("register_timeout") = ToSeconds(c.register_timeout),
      py::arg("connect_timeout") = ToSeconds(c.connect_timeout),
      py::arg("stall_timeout") = ToSeconds(c.stall_timeout),
      py::arg("busy_timeout") = ToSeconds(c.busy_timeout),
      py::arg("cold_start_wait") = ToSeconds(c.cold_start_wait),
      py::arg("heartbeat_timeout") = ToSeconds(c.heartbeat_timeout), py::arg("stripe") = c.stripe,
      py::arg("rendezvous") = NoneIfEmpty(c.transport.rendezvous_uri),
      py::arg("interface") = c.transport.interface,
      py::arg("mpi_helpers") = c.transport.mpi_helpers,
      py::arg("registry") = NoneIfEmpty(c.registry), py::arg("topology") = NoneIfEmpty(c.topology));
  return py::dict(py::arg("server") = server, py::arg("load") = load, py::arg("relay") = o.relay,
                  py::arg("metrics_listen") = NoneIfEmpty(o.metrics_listen));
}

}  // namespace

PYBIND11_MODULE(_netloader, m) {
  m.doc() = "netloader: load model weights from a running peer (C++ core)";
  py::object error = py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
  py::object base = py::reinterpret_steal<py::object>(
      PyErr_NewExceptionWithDoc("netloader.Error", "A netloader failure.", error.ptr(), nullptr));
  m.attr("Error") = base;
  const std::pair<StatusCode, const char*> codes[] = {
      {StatusCode::kInvalidArgument, "InvalidArgument"},
      {StatusCode::kNotFound, "NotFound"},
      {StatusCode::kUnavailable, "Unavailable"},
      {StatusCode::kTimeout, "Timeout"},
      {StatusCode::kBusy, "Busy"},
      {StatusCode::kFingerprintMismatch, "FingerprintMismatch"},
      {StatusCode::kProtocolMismatch, "ProtocolMismatch"},
      {StatusCode::kChecksumMismatch, "ChecksumMismatch"},
      {StatusCode::kTransferFailed, "TransferFailed"},
      {StatusCode::kPermissionDenied, "PermissionDenied"},
      {StatusCode::kCancelled, "Cancelled"},
      {StatusCode::kInternal, "Internal"},
  };
  for (const auto& [code, name] : codes) {
    py::object cls = py::reinterpret_steal<py::object>(
        PyErr_NewException((std::string("netloader.") + name).c_str(), base.ptr(), nullptr));
    m.attr(name) = cls;
    Exceptions()[code] = cls;
  }
  m.attr("PROTOCOL_VERSION") = kProtocolVersion;
  m.def("_load", &PyLoad, py::arg("tensors"), py::arg("sources"), py::arg("options"),
        py::arg("cancel") = py::none(), py::arg("relay") = nullptr,
        py::arg("connect_hook") = py::none());
  SetLogSink([](LogLevel level, std::string_view message) { Logs().Push(level, message); });
  m.def("_take_logs", [] { return Logs().Take(); });
  m.def(
      "_wait_for_logs",
      [](double seconds) {
        py::gil_scoped_release released;
        return Logs().Wait(seconds);
      },
      py::arg("seconds"));
  m.def("_close_logs", [] { Logs().Close(); });
  m.def("_logs_closed", [] { return Logs().closed(); });
  py::class_<PyServer>(m, "_Server")
      .def(py::init<const std::vector<TensorTuple>&, const py::dict&, bool>())
      .def_property_readonly("endpoint", &PyServer::endpoint)
      .def("mark_loaded", &PyServer::mark_loaded)
      .def("stats", &PyServer::stats)
      .def("stop", &PyServer::stop);
  m.def("_read_layout", &ReadLayout, py::arg("path"));
  py::class_<Block>(m, "_Block", py::buffer_protocol()).def_buffer([](Block& b) {
    static char empty;  // a zero-byte tensor has no memory; a buffer needs an address
    return py::buffer_info(b.data != nullptr ? b.data : &empty, 1,
                           py::format_descriptor<uint8_t>::format(), 1, {b.size}, {1});
  });
  m.def(
      "_allocate",
      [](const std::string& path) {
        return Allocate(Take(ReadCheckpointLayout(path, LayoutRead::kHeadersOnly)));
      },
      py::arg("path"));
  // Tensors of any shapes, e.g. one rank's shards of a checkpoint: (name, dtype, shape) each.
  m.def(
      "_allocate_tensors",
      [](const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& tensors) {
        CheckpointLayout layout;
        layout.shards.emplace_back();
        for (const auto& [name, dtype, shape] : tensors) {
          std::optional<DType> parsed = ParseDType(dtype);
          if (!parsed) {
            Raise(Status(StatusCode::kInvalidArgument, "tensor '" + name + "': dtype " + dtype));
          }
          uint64_t bytes = DTypeSize(*parsed);
          for (int64_t d : shape) {
            if (d < 0) Raise(Status(StatusCode::kInvalidArgument, "tensor '" + name + "': shape"));
            bytes *= static_cast<uint64_t>(d);
          }
          layout.shards.back().tensors.push_back({name, *parsed, shape, bytes, 0});
        }
        return Allocate(layout);
      },
      py::arg("tensors"));
  m.def("_prepare_mpi_environment",
        [](const std::string& rendezvous, const std::string& interface) {
          TransportOptions options;
          options.rendezvous_uri = rendezvous;
          if (!interface.empty()) options.interface = interface;
          PrepareMpiEnvironment(options);
        });
  m.def("_initialize_transport",
        [](const std::string& rendezvous, const std::string& interface, bool mpi_helpers) {
          TransportOptions options;
          options.rendezvous_uri = rendezvous;
          if (!interface.empty()) options.interface = interface;
          options.mpi_helpers = mpi_helpers;
          Status status;
          {
            py::gil_scoped_release released;
            status = InitializeTransport(options);
          }
          if (!status.ok()) Raise(status);
        });
  m.def("_serve_metrics", [](const std::string& listen) { return Take(ServeMetrics(listen)); });
  m.def("_count_fallback", [](const std::string& reason) { CountFallback(reason); });
  m.def("_status", &StatusOf, py::arg("endpoint"), py::arg("secret"), py::arg("timeout"));
  m.def("_parse_loader_config", &ParseExtraConfig, py::arg("json_text"), py::arg("world_size"));
  m.def("_options_for_rank", &RankOptionsOf, py::arg("json_text"), py::arg("world_size"),
        py::arg("rank"), py::arg("partition"));
  m.def("_loader_config_help", &LoaderConfigHelp);
  m.def("tensor_pattern_matches", &TensorPatternMatches, py::arg("pattern"), py::arg("name"),
        "Whether tensor `name` matches `pattern` as select= and TENSORS read it: '*' any run of "
        "characters, '?' one, '\\' escapes the next.");
  m.def("exact_tensor_pattern", &ExactTensorPattern, py::arg("name"),
        "A pattern that matches exactly the tensor `name` (its '*', '?' and '\\' escaped).");
  m.def("_load_from_disk", &LoadFromDisk, py::arg("path"), py::arg("tensors"));
  m.def("_load_secret", [](const std::string& path) { return Take(LoadOrCreateSecret(path)); });
  m.def("_check_secret", [](const std::string& key) {
    Status valid = ValidateSecret(key);
    if (!valid.ok()) Raise(valid);
  });
  m.def("_set_log_level", [](const std::string& level) {
    const std::map<std::string, LogLevel> levels = {
        {"trace", LogLevel::kTrace}, {"debug", LogLevel::kDebug}, {"info", LogLevel::kInfo},
        {"warn", LogLevel::kWarn},   {"error", LogLevel::kError}, {"off", LogLevel::kOff}};
    const auto it = levels.find(level);
    if (it == levels.end())
      Raise(Status(StatusCode::kInvalidArgument, "log level '" + level + "'"));
    SetLogLevel(it->second);
  });
}
