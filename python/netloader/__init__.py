"""netloader: load model weights from a running peer instead of from disk.

Tensors are PyTorch CPU tensors or numpy arrays, given as an ordered mapping name -> tensor in
the checkpoint's storage order (a ``state_dict()`` is one). Their memory is used where it lies:
``load`` fills it in place, ``Server`` streams from it. See the README, section "Python".
"""

import atexit
import ctypes
import logging
import os
import threading

# Open MPI loads its components as plugins that resolve symbols against libmpi; loaded as a
# dependency of a Python extension (RTLD_LOCAL) they would not find them.
ctypes.CDLL("libmpi.so.40", mode=ctypes.RTLD_GLOBAL)

from . import _netloader  # noqa: E402
from ._netloader import (  # noqa: E402,F401
    PROTOCOL_VERSION,
    Busy,
    Cancelled,
    ChecksumMismatch,
    Error,
    FingerprintMismatch,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolMismatch,
    Timeout,
    TransferFailed,
    Unavailable,
    exact_tensor_pattern,
    tensor_pattern_matches,
)

# netloader's log lines go to the logger "netloader" (its C++ threads queue them; a daemon thread
# and every blocking call of this module hand them on), so the application's logging
# configuration decides what is shown. set_log_level() sets what the C++ side emits at all.
logger = logging.getLogger("netloader")
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING,
           4: logging.ERROR}
_logs_lock = threading.Lock()


def _forward_logs():
    with _logs_lock:  # in the order they were logged, whichever thread hands them on
        for level, message in _netloader._take_logs():
            logger.log(_LEVELS.get(level, logging.ERROR), "%s", message)


def _forward_logs_forever():
    while not _netloader._logs_closed():
        if _netloader._wait_for_logs(0.2):  # waits without the lock and without the GIL
            _forward_logs()


_forwarder = threading.Thread(target=_forward_logs_forever, name="netloader-logs", daemon=True)
_forwarder.start()


@atexit.register
def _stop_forwarding_logs():
    _netloader._close_logs()
    _forwarder.join(timeout=5)
    _forward_logs()

__all__ = [
    "load", "Server", "read_layout", "allocate", "load_from_disk", "initialize_transport",
    "prepare_mpi_environment", "serve_metrics", "count_fallback",
    "set_log_level", "status", "parse_loader_config", "options_for_rank", "loader_config_help",
    "tensor_pattern_matches",
    "exact_tensor_pattern",
    "Error", "Busy",
    "Cancelled", "ChecksumMismatch", "FingerprintMismatch", "Internal", "InvalidArgument",
    "NotFound", "PermissionDenied", "ProtocolMismatch", "Timeout", "TransferFailed",
    "Unavailable", "PROTOCOL_VERSION",
]

# torch and numpy dtype names -> safetensors spelling.
_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "float16": "F16", "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32",
    "int64": "I64", "uint64": "U64", "float64": "F64", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
}


def _describe(name, tensor):
    """(name, dtype, shape, address, nbytes) of a contiguous CPU tensor or numpy array."""
    if hasattr(tensor, "data_ptr"):  # torch.Tensor
        if tensor.device.type != "cpu":
            raise ValueError(f"tensor '{name}' is on {tensor.device}; only CPU tensors for now")
        if not tensor.is_contiguous():
            raise ValueError(f"tensor '{name}' is not contiguous")
        dtype = str(tensor.dtype).replace("torch.", "")
        address, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    elif hasattr(tensor, "__array_interface__"):  # numpy.ndarray
        if not tensor.flags["C_CONTIGUOUS"]:
            raise ValueError(f"tensor '{name}' is not contiguous")
        if not tensor.flags["WRITEABLE"]:
            raise ValueError(f"tensor '{name}' is read-only")
        dtype = tensor.dtype.name
        address, nbytes = tensor.__array_interface__["data"][0], tensor.nbytes
    else:
        raise TypeError(f"tensor '{name}' is a {type(tensor).__name__}, not a tensor or array")
    if dtype not in _DTYPES:
        raise ValueError(f"tensor '{name}' has dtype {dtype}, which safetensors does not define")
    return (str(name), _DTYPES[dtype], [int(d) for d in tensor.shape], address, nbytes)


def _describe_all(tensors):
    if not hasattr(tensors, "items"):
        raise TypeError("tensors must be an ordered mapping name -> tensor (a state_dict)")
    return [_describe(name, t) for name, t in tensors.items()]


def _secret(secret):
    """None: no authentication; a path to a secret file (created if missing); or the key."""
    if secret is None:
        return ""
    if os.path.sep in secret or os.path.exists(secret):
        return _netloader._load_secret(os.path.expanduser(secret))
    _netloader._check_secret(secret)
    return secret


def _partition(partition):
    unknown = set(partition) - {"tp_size", "tp_rank", "pp_size", "pp_rank", "layout_key"}
    if unknown:
        raise ValueError(f"partition has unknown keys {sorted(unknown)}")
    return dict(partition)


def _peer_options(model_id, partition, secret, window, connect_timeout, stall_timeout,
                  heartbeat_timeout, rendezvous, interface, mpi_helpers, registry, topology):
    options = {"secret": _secret(secret)}
    if model_id is not None:
        options["model_id"] = model_id
    if partition is not None:
        options["partition"] = _partition(partition)
    for key, value in (("window", window), ("connect_timeout", connect_timeout),
                       ("stall_timeout", stall_timeout),
                       ("heartbeat_timeout", heartbeat_timeout), ("rendezvous", rendezvous),
                       ("interface", interface), ("registry", registry), ("topology", topology)):
        if value is not None:
            options[key] = value
    if mpi_helpers is not None:
        options["mpi_helpers"] = bool(mpi_helpers)
    return options


def load(tensors, sources, *, model_id=None, partition=None, secret=None, window=None,
         register_timeout=None, connect_timeout=None, stall_timeout=None, busy_timeout=None,
         heartbeat_timeout=None, stripe=None, select=None, destination_filled=False,
         rendezvous=None, interface=None, mpi_helpers=None, registry=None, topology=None,
         cold_start_wait=None, cancel=None, relay=None, connect_hook=None):
    """Fills `tensors` in place from the first of `sources` that holds the same model.

    Every chunk is verified against the source's XXH3 digests before this returns; on failure
    it raises a netloader.Error subclass and the tensors' contents are undefined. Timeouts are
    in seconds. `select`: tensor name patterns of a partial load. Returns the load's statistics
    as a dict (bytes, seconds, gbps, source, attempts, ...). The GIL is released meanwhile.

    `mpi_helpers=True`: MPI runs in helper processes, never in this one (a crash in MPI costs
    this load only, and sources with private rendezvous can be striped and resumed across);
    ignored where this process already runs MPI (under mpirun). Default False.

    `registry`: an etcd client URL ("http://HOST:PORT[/PREFIX]") where the fleet's servers
    publish themselves: the load finds its sources there, best first (ready, a free slot, the
    same `topology` label), before `sources`, which may then be empty. When it lists no holder
    and `sources` is empty (a cold start), the instances starting together read the checkpoint
    from storage once: the first load with a `relay` to claim that in the registry raises
    netloader.Unavailable at once, saying so (read from disk, then relay.mark_loaded()), and the
    others wait up to `cold_start_wait` seconds (default 300; 0: never) for a holder, then load
    from it.

    `relay`: a netloader.Server started with relay=True over these same tensors, which serves
    each chunk to other instances as soon as this load verified it (a burst of instances then
    forms a chain from one seed: README, "A burst of instances").

    `connect_hook`: called as connect_hook("before") just before each MPI connect to a source and
    connect_hook("after") as soon as it returns, on the loading thread. The ranks of a multi-rank
    instance use it to connect one after another (Open MPI can wedge two connects between the
    same two mpirun jobs made at the same moment; README, "Multi-rank engines"); their
    transfers still overlap. An exception it raises is printed and ignored.

    Stopping it: Ctrl-C (KeyboardInterrupt) or `cancel` (a threading.Event, or anything with
    is_set()) being set ends the load within about 0.1 s; it then raises KeyboardInterrupt or
    netloader.Cancelled, and the tensors' contents are undefined.
    """
    if isinstance(sources, str):
        sources = [sources]
    options = _peer_options(model_id, partition, secret, window, connect_timeout, stall_timeout,
                            heartbeat_timeout, rendezvous, interface, mpi_helpers, registry,
                            topology)
    for key, value in (("register_timeout", register_timeout), ("busy_timeout", busy_timeout),
                       ("cold_start_wait", cold_start_wait), ("stripe", stripe)):
        if value is not None:
            options[key] = value
    if select is not None:
        options["tensors"] = list(select)
    options["destination_filled"] = bool(destination_filled)
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise TypeError("cancel must be a threading.Event (or have is_set())")
    if connect_hook is not None and not callable(connect_hook):
        raise TypeError("connect_hook must be callable")
    try:
        return _netloader._load(_describe_all(tensors), list(sources), options, cancel,
                                None if relay is None else relay._server, connect_hook)
    finally:
        _forward_logs()


class Server:
    """Serves `tensors` (which must stay unchanged) on background threads, while Python runs.

    A context manager: ``with netloader.Server(state_dict) as server: ... server.endpoint``.
    `relay=True`: serves while `tensors` are being loaded by ``load(tensors, ..., relay=this)``,
    each chunk once that load verified it; needs `rendezvous` (the one every instance shares)
    or mpi_helpers=True. `mpi_helpers=True`: MPI runs in a helper process (see load()).
    `registry`: an etcd client URL where the server publishes itself while it serves (with its
    `topology` label), under a lease of `registry_ttl` seconds. `advertise`: the host name or
    address other instances reach this server at when `listen` binds every interface
    ("tcp://0.0.0.0:7000", as in a container): `endpoint` is then "tcp://ADVERTISE:PORT".
    Should that load fail and the tensors be filled otherwise (from disk), call mark_loaded().
    """

    def __init__(self, tensors, listen="tcp://127.0.0.1:0", *, model_id=None, partition=None,
                 secret=None, window=None, max_clients=None, chunk_bytes=None, fanout=None,
                 connect_timeout=None, stall_timeout=None, heartbeat_timeout=None,
                 rendezvous=None, interface=None, mpi_helpers=None, registry=None,
                 topology=None, registry_ttl=None, advertise=None, relay=False):
        self._tensors = tensors  # keeps the memory alive as long as it is served
        options = _peer_options(model_id, partition, secret, window, connect_timeout,
                                stall_timeout, heartbeat_timeout, rendezvous, interface,
                                mpi_helpers, registry, topology)
        options["listen"] = listen
        for key, value in (("max_clients", max_clients), ("chunk_bytes", chunk_bytes),
                           ("fanout", fanout), ("registry_ttl", registry_ttl),
                           ("advertise", advertise)):
            if value is not None:
                options[key] = value
        try:
            self._server = _netloader._Server(_describe_all(tensors), options, bool(relay))
        finally:
            _forward_logs()

    @property
    def endpoint(self):
        return self._server.endpoint

    def stats(self):
        return self._server.stats()

    def mark_loaded(self):
        """A relay whose load failed, its tensors since filled otherwise (from disk): computes
        their digests and serves them."""
        self._server.mark_loaded()

    def stop(self):
        """Stops serving (idempotent); the tensors may then change or go."""
        self._server.stop()
        _forward_logs()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def read_layout(path):
    """The checkpoint's tensors in storage order: a list of dicts with name, dtype (the
    safetensors spelling), shape, file, offset and nbytes. Reads the headers only."""
    return [dict(zip(("name", "dtype", "shape", "file", "offset", "nbytes"), t))
            for t in _netloader._read_layout(path)]


_NUMPY_DTYPES = {v: k for k, v in _DTYPES.items() if k not in ("bfloat16", "float8_e5m2",
                                                                 "float8_e4m3fn")}


def allocate(layout, framework="torch"):
    """Fresh zero-filled tensors, in order: an ordered dict name -> tensor ("torch") or array
    ("numpy"). `layout` is a checkpoint's path (its headers only are read) or a list of dicts
    with name, dtype (the safetensors spelling) and shape, e.g. read_layout's with one rank's
    shard shapes. The memory is what a load fills fastest (2 MiB huge pages, faulted in
    beforehand; about 4x faster than fresh malloc'd pages on the benchmark's VMs) and is freed
    with the last tensor using it."""
    if isinstance(layout, (str, os.PathLike)):
        blocks = _netloader._allocate(str(layout))
    else:
        blocks = _netloader._allocate_tensors(
            [(str(t["name"]), str(t["dtype"]), [int(d) for d in t["shape"]]) for t in layout])
    out = {}
    for name, dtype, shape, block in blocks:
        if framework == "torch":
            import torch

            torch_dtype = getattr(torch, {v: k for k, v in _DTYPES.items()}[dtype], None)
            if torch_dtype is None:
                raise ValueError(f"tensor '{name}': this torch has no {dtype}")
            if memoryview(block).nbytes == 0:
                out[name] = torch.empty(shape, dtype=torch_dtype)
            else:
                out[name] = torch.frombuffer(block, dtype=torch_dtype).view(shape)
        elif framework == "numpy":
            import numpy

            if dtype not in _NUMPY_DTYPES:
                raise ValueError(f"tensor '{name}': numpy has no {dtype}")
            out[name] = numpy.frombuffer(block, dtype=_NUMPY_DTYPES[dtype]).reshape(shape)
        else:
            raise ValueError(f"framework must be 'torch' or 'numpy', not {framework!r}")
    return out


def initialize_transport(rendezvous, interface=None, mpi_helpers=False):
    """Starts MPI now (~0.1-0.3 s) on the shared `rendezvous`, e.g. on a thread while the model's
    memory is allocated, instead of inside the first load or server; with mpi_helpers=True, in a
    helper process that the next load on that rendezvous takes."""
    _netloader._initialize_transport(rendezvous, interface or "", bool(mpi_helpers))


def prepare_mpi_environment(rendezvous=None, interface=None):
    """For processes that initialise MPI themselves, such as the ranks of an instance started
    by ``mpirun --ompi-server file:PATH`` using mpi4py: call it before MPI is initialised (before
    ``from mpi4py import MPI``, with ``mpi4py.rc.thread_level = "multiple"``). It sets the Open
    MPI settings netloader's data plane needs, keeping any already set; netloader then uses that
    MPI as it is. `rendezvous` is the PATH's "file:PATH" every instance shares."""
    _netloader._prepare_mpi_environment(rendezvous or "", interface or "")


def status(endpoint, *, secret=None, timeout=10.0):
    """What the server (or relay) at `endpoint` is doing, without a session: a dict with state
    ("serving", "loading", "waiting", "failed" or "unavailable", the last two with failure:
    why; "unavailable" holds bytes but cannot take a client now), model_id, partition,
    table_digest, bytes_total, bytes_held, sessions, max_sessions, fanout, children (the relays
    streaming from it), bytes_sent, clients_served, clients_failed and redirected. Raises
    Unavailable (nothing listens there), PermissionDenied (another secret) or Timeout."""
    return _netloader._status(endpoint, _secret(secret), float(timeout))


def serve_metrics(listen):
    """Serves this process's netloader metrics (Prometheus text format) at
    http://LISTEN/metrics, LISTEN being "HOST:PORT" (port 0 picks a free one); returns the
    bound "HOST:PORT". One endpoint per process: calling again with the same LISTEN (or port 0)
    returns it; another raises InvalidArgument. Raises Unavailable when it cannot bind. The
    metrics count every server, relay and load of the process (docs/usage.md, "Metrics")."""
    return _netloader._serve_metrics(str(listen))


def count_fallback(reason):
    """Counts an engine load that fell back to disk in netloader_fallbacks_total{reason}:
    "no_source", "no_tensors", or the failed load's exception class name ("Unavailable",
    "Timeout", ...); anything else counts as "other"."""
    _netloader._count_fallback(str(reason))


def parse_loader_config(extra_config, world_size=1):
    """Parses an engine's --model-loader-extra-config (a JSON object, as text, or a dict) for an
    instance of `world_size` ranks, with the same keys and strict rules as netloader-llama: one
    C++ parser serves both. Returns a dict: sources (rank -> endpoints), listen_port,
    listen_host, metrics_port (None when unset), serve, model_id, output_prefix, the timeouts in seconds, auth, secret_file,
    max_clients, fanout, chunk_mib, window, stripe, delta_from, tensors, rendezvous, interface,
    mpi_helpers, registry, topology.
    Raises netloader.InvalidArgument naming the key that is wrong (NotFound for a CONFIG_FILE
    that is not there)."""
    return _netloader._parse_loader_config(_config_text(extra_config), int(world_size))


def options_for_rank(extra_config, world_size, rank, partition):
    """One rank's options from an engine's --model-loader-extra-config (text or a dict, as
    parse_loader_config takes it), derived by the library itself exactly as netloader-llama
    derives them (loader_config.h, OptionsForRank). `partition`: the rank's tp_size, tp_rank,
    pp_size, pp_rank and layout_key (a dict; keys left out keep their defaults). Returns a dict:

    * "server": the keyword arguments of Server: listen (LISTEN_HOST at LISTEN_PORT + rank, or a
      free port), advertise (ADVERTISE_HOST), model_id, partition, window, max_clients,
      chunk_bytes, fanout, the timeouts in seconds, rendezvous, interface, mpi_helpers, registry
      and topology;
    * "load": the keyword arguments of load: sources (the rank's SOURCE entry; empty: load from
      disk), model_id, partition, window, the timeouts in seconds (busy_timeout at least
      register_timeout), cold_start_wait, stripe, rendezvous, interface, mpi_helpers, registry
      and topology;
    * "metrics_listen": where the rank serves its metrics (serve_metrics), or None;
    * "relay": whether to serve while loading (Server(..., relay=True) passed as load's relay=):
      SERVE with a RENDEZVOUS or MPI_HELPERS, and no TENSORS.

    advertise, model_id, rendezvous, registry and topology are None when unset. Neither holds a
    secret (pass secret= yourself) nor load's select: a TENSORS load names this rank's matching
    tensors itself. Raises netloader.InvalidArgument for a wrong key or a rank outside
    [0, world_size), as parse_loader_config does.

        rank = netloader.options_for_rank(extra_config, 2, 1, {"tp_size": 2, "tp_rank": 1})
        stats = netloader.load(state_dict, secret=s, **rank["load"])  # if rank["load"]["sources"]
        server = netloader.Server(state_dict, secret=s, **rank["server"])
    """
    return _netloader._options_for_rank(_config_text(extra_config), int(world_size), int(rank),
                                        _partition(partition or {}))


def _config_text(extra_config):
    """An extra config as the C++ parser takes it: JSON text ("" meaning {})."""
    if isinstance(extra_config, dict):
        import json

        extra_config = json.dumps(extra_config)
    return extra_config or "{}"


def loader_config_help():
    """The keys parse_loader_config accepts, one line each (for an engine's --help)."""
    return _netloader._loader_config_help()


def load_from_disk(path, tensors):
    """Fills `tensors` (as read_layout lists them, in that order) from the checkpoint's files."""
    _netloader._load_from_disk(path, _describe_all(tensors))


def set_log_level(level):
    """netloader's own log level: trace, debug, info, warn, error or off."""
    _netloader._set_log_level(level)
