"""The Python binding against the real C++ tools: real ZeroMQ, real MPI between real processes,
real safetensors files. Run by ctest (label `python`), one ctest entry per test function, with
PYTHONPATH at the build tree's python/ and NETLOADER_BIN_DIR at its bin/."""

import _thread
import inspect
import json
import logging
import os
import socket
import subprocess
import threading
import time

import numpy
import pytest
import torch

import netloader

BIN = os.environ.get("NETLOADER_BIN_DIR", os.path.join(os.path.dirname(__file__), "../../build/bin"))
TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
netloader.set_log_level("warn")


def run(*argv, timeout=120):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def make_llama(tmp_path_factory, size_mib):
    """A Llama-architecture checkpoint of about `size_mib` MiB (float32), as netloader-llama
    reads."""
    path = tmp_path_factory.mktemp("ckpt") / "model"
    done = run(f"{BIN}/netloader-make-llama", "--output", path, "--size-mib", size_mib)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_llama(tmp_path_factory, 24)


@pytest.fixture(scope="module")
def large_model(tmp_path_factory):
    """A load long enough to stop midway."""
    return make_llama(tmp_path_factory, 160)


def empty_like_layout(path):
    return {t["name"]: torch.empty(t["shape"], dtype=TORCH_DTYPES[t["dtype"]])
            for t in netloader.read_layout(str(path))}


def from_disk(path):
    tensors = empty_like_layout(path)
    netloader.load_from_disk(str(path), tensors)
    return tensors


class CppServer:
    """netloader-server over `path` on `rendezvous`, stopped (SIGTERM) on exit."""

    def __init__(self, path, tmp_path, rendezvous):
        endpoint_file = tmp_path / "endpoint"
        self.process = subprocess.Popen(
            [f"{BIN}/netloader-server", "--model", str(path), "--no-auth", "--endpoint-file",
             str(endpoint_file), "--log-level", "warn", "--rendezvous", rendezvous],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not endpoint_file.exists() and time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read()
            time.sleep(0.01)
        self.endpoint = endpoint_file.read_text().strip()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.communicate(timeout=30)


def test_errors_are_one_class_per_status_code():
    for name in ("InvalidArgument", "NotFound", "Unavailable", "Timeout", "Busy",
                 "FingerprintMismatch", "ProtocolMismatch", "ChecksumMismatch", "TransferFailed",
                 "PermissionDenied", "Cancelled", "Internal"):
        cls = getattr(netloader, name)
        assert issubclass(cls, netloader.Error) and cls.__name__ == name
    assert netloader.PROTOCOL_VERSION == 5


def test_a_state_dict_loads_in_place_from_a_cpp_server_byte_identical(model, tmp_path, rendezvous):
    reference = from_disk(model)
    with CppServer(model, tmp_path, rendezvous) as server:
        state_dict = empty_like_layout(model)
        addresses = {k: t.data_ptr() for k, t in state_dict.items()}
        stats = netloader.load(state_dict, server.endpoint, rendezvous=rendezvous)
    assert stats["bytes"] == sum(t.numel() * t.element_size() for t in reference.values())
    assert stats["tensors"] == len(reference)
    assert stats["attempts"][0]["status"] == "OK"
    for name, tensor in reference.items():
        assert torch.equal(state_dict[name], tensor), name
        assert state_dict[name].data_ptr() == addresses[name], f"{name} was not filled in place"


def helper_children():
    """The pids of this process's MPI helpers (netloader-mpi-helper, comm truncated to 15)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and comm == "netloader-mpi-h":
            found.append(int(entry))
    return found


def test_mpi_helpers_keep_mpi_out_of_this_process(model):
    """mpi_helpers=True: a Python server and a Python load each run MPI in a helper process of
    their own, on private rendezvous: the copy is byte-identical, and this interpreter never
    initialised MPI (mpi4py, on the same libmpi, says so)."""
    import mpi4py
    mpi4py.rc.initialize = False
    from mpi4py import MPI

    source = from_disk(model)
    with netloader.Server(source, mpi_helpers=True) as server:
        tensors = empty_like_layout(model)
        stats = netloader.load(tensors, server.endpoint, mpi_helpers=True)
        helpers = helper_children()
    assert stats["bytes"] > 0
    for name, tensor in source.items():
        assert torch.equal(tensors[name], tensor), name
    assert len(helpers) >= 2, "one helper serves, one loads"
    assert not MPI.Is_initialized()


def test_a_prestarted_helper_carries_the_next_load(model, tmp_path, rendezvous):
    """initialize_transport(mpi_helpers=True) starts the helper the next load on that rendezvous
    takes, although the source names the rendezvous by its URI and this process by its file."""
    netloader.initialize_transport(rendezvous, mpi_helpers=True)
    prestarted = helper_children()
    assert len(prestarted) == 1
    with CppServer(model, tmp_path, rendezvous) as server:
        tensors = empty_like_layout(model)
        netloader.load(tensors, server.endpoint, rendezvous=rendezvous, mpi_helpers=True)
    assert sorted(helper_children()) == sorted(prestarted), "the load started a helper of its own"


def test_a_load_finds_its_source_in_the_registry(model, etcd):
    """registry=: a Python server publishes itself in a real etcd (started on free loopback
    ports), and a Python load given no sources finds it there, byte-identical."""
    source = from_disk(model)
    # MPI in helpers: one process cannot connect to itself over MPI.
    with netloader.Server(source, registry=etcd.url, registry_ttl=2, model_id="org/llama@1",
                          mpi_helpers=True) as server:
        etcd.wait_for_holders(1)
        tensors = empty_like_layout(model)
        stats = netloader.load(tensors, [], registry=etcd.url, model_id="org/llama@1",
                               mpi_helpers=True)
        assert stats["source"] == server.endpoint
    for name, tensor in source.items():
        assert torch.equal(tensors[name], tensor), name


def test_metrics_count_a_python_load_and_parse_as_prometheus(model):
    """serve_metrics: the process's metrics over HTTP, as Prometheus' own Python parser reads
    them, counting a load this process made."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    at = netloader.serve_metrics("127.0.0.1:0")
    assert netloader.serve_metrics("127.0.0.1:0") == at  # one endpoint per process
    with pytest.raises(netloader.InvalidArgument):
        netloader.serve_metrics("127.0.0.1:1")

    def scrape():  # the process's counters count every earlier load too: compare differences
        with urllib.request.urlopen(f"http://{at}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    before = scrape()
    source = from_disk(model)
    with netloader.Server(source, mpi_helpers=True) as server:
        tensors = empty_like_layout(model)
        stats = netloader.load(tensors, server.endpoint, mpi_helpers=True)
    netloader.count_fallback("Timeout")
    netloader.count_fallback("something else")
    after = scrape()

    def grew(name, labels=()):
        return after[(name, labels)] - before.get((name, labels), 0)

    assert grew("netloader_received_bytes_total") == stats["bytes"]
    assert grew("netloader_loads_total", (("result", "OK"),)) == 1
    assert grew("netloader_fallbacks_total", (("reason", "Timeout"),)) == 1
    assert grew("netloader_fallbacks_total", (("reason", "other"),)) == 1


def test_numpy_arrays_load_too(model, tmp_path, rendezvous):
    layout = netloader.read_layout(str(model))
    arrays = {t["name"]: numpy.empty(t["shape"], dtype=numpy.float32) for t in layout}
    with CppServer(model, tmp_path, rendezvous) as server:
        netloader.load(arrays, [server.endpoint], rendezvous=rendezvous)
    reference = from_disk(model)
    for name, tensor in reference.items():
        assert numpy.array_equal(arrays[name], tensor.numpy()), name


def test_allocated_tensors_take_a_load_and_free_with_their_last_user(model, tmp_path,
                                                                     rendezvous):
    netloader.initialize_transport(rendezvous)  # as an engine would, while allocating
    state_dict = netloader.allocate(model)
    layout = netloader.read_layout(str(model))
    assert list(state_dict) == [t["name"] for t in layout], "storage order"
    for t in layout:
        assert list(state_dict[t["name"]].shape) == t["shape"]
        assert not state_dict[t["name"]].any(), "zero-filled"
    with CppServer(model, tmp_path, rendezvous) as server:
        netloader.load(state_dict, server.endpoint, rendezvous=rendezvous)
    reference = from_disk(model)
    kept = state_dict[layout[0]["name"]] * 1  # a copy
    view = state_dict[layout[0]["name"]][:2]
    del state_dict  # the view alone keeps the memory alive
    assert torch.equal(view, reference[layout[0]["name"]][:2])
    assert torch.equal(kept, reference[layout[0]["name"]])
    arrays = netloader.allocate(model, framework="numpy")
    assert arrays[layout[0]["name"]].flags["WRITEABLE"]
    netloader.load_from_disk(str(model), arrays)
    assert numpy.array_equal(arrays[layout[0]["name"]], reference[layout[0]["name"]].numpy())


def test_a_chain_across_languages_is_byte_identical_at_every_hop(model, tmp_path, rendezvous):
    # C++ server -> Python load -> Python Server -> C++ netloader-client, which verifies every
    # chunk against the Python server's digests and reads back what it wrote.
    with CppServer(model, tmp_path, rendezvous) as server:
        state_dict = empty_like_layout(model)
        netloader.load(state_dict, server.endpoint, rendezvous=rendezvous)
    with netloader.Server(state_dict, rendezvous=rendezvous) as python_server:
        out = tmp_path / "out"
        done = run(f"{BIN}/netloader-client", "--source", python_server.endpoint, "--model", model,
                   "--output", out, "--no-auth", "--json", "--rendezvous", rendezvous)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10  # a session is counted once the server retires it
        while python_server.stats()["clients_served"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert python_server.stats()["bytes_sent"] == sum(
            t.numel() * t.element_size() for t in state_dict.values())
    for name in os.listdir(model):
        if name.endswith(".safetensors"):
            assert (out / name).read_bytes() == (model / name).read_bytes(), name


def test_wrong_tensors_are_refused_naming_the_tensor(model, tmp_path, rendezvous):
    state_dict = empty_like_layout(model)
    name = next(iter(state_dict))
    skewed = dict(state_dict)
    skewed[name] = torch.empty(list(reversed(state_dict[name].shape))).t()
    with pytest.raises(ValueError, match=f"'{name}' is not contiguous"):
        netloader.load(skewed, "tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match=f"'{name}' is a list"):
        netloader.load({name: [1, 2, 3]}, "tcp://127.0.0.1:1")
    elsewhere = dict(state_dict)
    elsewhere[name] = torch.empty(state_dict[name].shape, device="meta")
    with pytest.raises(ValueError, match=f"'{name}' is on meta"):
        netloader.load(elsewhere, "tcp://127.0.0.1:1")
    other = dict(state_dict)
    other[name] = torch.empty(state_dict[name].shape, dtype=torch.float64)
    with CppServer(model, tmp_path, rendezvous) as server:
        with pytest.raises(netloader.FingerprintMismatch, match=name) as refused:
            netloader.load(other, server.endpoint, rendezvous=rendezvous)
        assert refused.value.code == "FingerprintMismatch"
        assert name in refused.value.message
        with pytest.raises(netloader.FingerprintMismatch) as refused:
            netloader.load(state_dict, server.endpoint, rendezvous=rendezvous,
                           model_id="org/other's@1", partition={"tp_size": 2, "tp_rank": 1})
        fields = {field: (server_value, client_value)
                  for field, server_value, client_value in refused.value.differences}
        assert fields["model_id"] == ("", "org/other's@1"), refused.value.differences
        assert fields["partition.tp_size"] == ("1", "2"), refused.value.differences


def test_a_source_that_is_not_there_raises_unavailable_at_once(model):
    state_dict = empty_like_layout(model)
    start = time.monotonic()
    with pytest.raises(netloader.Unavailable, match="refused or the host is unreachable"):
        netloader.load(state_dict, "tcp://127.0.0.1:9", register_timeout=30)
    assert time.monotonic() - start < 20
    with pytest.raises(netloader.Unavailable):
        netloader.status("tcp://127.0.0.1:9", timeout=30)
    assert time.monotonic() - start < 40


def test_a_python_server_keeps_the_interpreter_running_while_it_serves(model, tmp_path, rendezvous):
    state_dict = from_disk(model)
    go = tmp_path / "go"
    with netloader.Server(state_dict, rendezvous=rendezvous) as server:
        client = subprocess.Popen(
            [f"{BIN}/netloader-client", "--source", server.endpoint, "--model", str(model),
             "--verify-only", "--no-auth", "--rendezvous", rendezvous, "--testing-hold-at", "50",
             "--testing-hold-file", str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The client holds its load at half until this interpreter, while the server streams
        # to it, sees the session and lets it go: Python runs meanwhile.
        ticks = 0
        deadline = time.monotonic() + 60
        while server.stats()["active_transfers"] != 1 and time.monotonic() < deadline:
            ticks += 1
            time.sleep(0.005)
        assert server.stats()["active_transfers"] == 1
        go.write_text("")
        _, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        deadline = time.monotonic() + 10
        while server.stats()["clients_served"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats()["clients_served"] == 1


def test_a_load_releases_the_interpreter(model):
    # A source that accepts the connection and never answers: load waits out its register
    # deadline (2 s) inside C++. Another Python thread keeps running meanwhile; with the GIL
    # held it could not run at all until the load gave up.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    state_dict = empty_like_layout(model)
    outcome = {}

    def loading():
        try:
            netloader.load(state_dict, f"tcp://127.0.0.1:{silent.getsockname()[1]}",
                           register_timeout=2)
        except netloader.Error as e:
            outcome["error"] = e

    thread = threading.Thread(target=loading)
    thread.start()
    counted = 0
    while thread.is_alive():
        counted += 1
        time.sleep(0.001)
    thread.join()
    silent.close()
    assert isinstance(outcome.get("error"), netloader.Timeout), outcome
    assert counted >= 100, f"the interpreter ran only {counted} times in a 2 s load"


def test_a_shared_secret_admits_its_holders_only(model, tmp_path, rendezvous):
    # (A C++ client holding the file loads; this process does not load from its own server:
    # MPI connects between processes.)
    secret = str(tmp_path / "secret")  # created on first use, mode 0600
    state_dict = from_disk(model)
    with netloader.Server(state_dict, rendezvous=rendezvous, secret=secret) as server:
        with pytest.raises(netloader.PermissionDenied, match="runs without one"):
            netloader.load(empty_like_layout(model), server.endpoint, rendezvous=rendezvous)
        done = run(f"{BIN}/netloader-client", "--source", server.endpoint, "--model", model,
                   "--verify-only", "--secret-file", secret, "--rendezvous", rendezvous)
        assert done.returncode == 0, done.stderr
    with pytest.raises(netloader.InvalidArgument, match="40 characters of Z85"):
        netloader.load(state_dict, "tcp://127.0.0.1:9", secret="not-a-key")


def wait_for_file(path, process, seconds=60):
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text().strip()) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate(timeout=30)
        time.sleep(0.01)
    return path.read_text().strip()


def status_of(endpoint):
    return netloader.status(endpoint)


def test_ctrl_c_stops_a_load_promptly_and_nothing_is_reported_loaded(model, tmp_path,
                                                                      rendezvous):
    # A C++ relay loading from a C++ seed holds its own load at half; this interpreter loads
    # from the relay, gets what the relay holds and waits for the rest. Ctrl-C then ends the
    # load with KeyboardInterrupt at once (the stall deadline is 60 s), and the relay counts a
    # failed client, not a served one.
    go = tmp_path / "go"
    relay_endpoint = tmp_path / "relay-endpoint"
    with CppServer(model, tmp_path, rendezvous) as seed:
        relay = subprocess.Popen(
            [f"{BIN}/netloader-client", "--source", seed.endpoint, "--model", str(model),
             "--verify-only", "--no-auth", "--rendezvous", rendezvous, "--serve",
             "tcp://127.0.0.1:0", "--serve-endpoint-file", str(relay_endpoint),
             "--testing-hold-at", "50", "--testing-hold-file", str(go), "--log-level", "warn"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            endpoint = wait_for_file(relay_endpoint, relay)
            state_dict = empty_like_layout(model)
            registered = threading.Event()
            sent = {}

            def interrupt_once_registered():
                deadline = time.monotonic() + 60
                while status_of(endpoint)["sessions"] != 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                registered.set()
                sent["at"] = time.monotonic()
                _thread.interrupt_main()

            threading.Thread(target=interrupt_once_registered, daemon=True).start()
            stats = None
            with pytest.raises(KeyboardInterrupt):
                stats = netloader.load(state_dict, endpoint, rendezvous=rendezvous,
                                       stall_timeout=60)
            took = time.monotonic() - sent["at"]
            assert registered.is_set(), "the load never reached the relay"
            assert stats is None
            assert took < 10, f"the load went on for {took:.1f} s after Ctrl-C"
            deadline = time.monotonic() + 10
            while status_of(endpoint)["clients_failed"] != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            held = status_of(endpoint)
            assert held["clients_failed"] == 1 and held["clients_served"] == 0, held
            # The relay still holds only part of the model, and says so.
            assert held["state"] == "loading", held
            assert 0 < held["bytes_held"] < held["bytes_total"], held
            assert held["partition"]["tp_size"] == 1
            cli = json.loads(run(f"{BIN}/netloader-client", "--status", endpoint, "--json",
                                 "--no-auth").stdout)
            assert cli["bytes_total"] == held["bytes_total"]
        finally:
            go.write_text("")
            relay.send_signal(2)
            relay.communicate(timeout=60)


def test_a_cancelled_load_never_writes_into_its_tensors_afterwards(large_model, tmp_path,
                                                                  rendezvous):
    # The load is cancelled once its first bytes land, while later chunks are still arriving.
    # Once load() has raised, MPI must be done with the tensors: the caller may free them or fill
    # them from disk. A second load (which drives the same MPI) then must not change them.
    # (load() looks at `cancel` every 50 ms, so a fast load can finish first: that attempt is
    # repeated, at most 5 times.)
    model = large_model
    layout = netloader.read_layout(str(model))
    first_name = min(layout, key=lambda t: (t["file"], t["offset"]))["name"]
    fill = 0x5A
    with CppServer(model, tmp_path, rendezvous) as server:
        for _ in range(5):
            state_dict = empty_like_layout(model)
            raw = {k: t.reshape(-1).view(torch.uint8) for k, t in state_dict.items()}
            for r in raw.values():
                r.fill_(fill)
            first = raw[first_name][:4096]
            cancel = threading.Event()

            def cancel_on_first_bytes():
                deadline = time.monotonic() + 60
                while not cancel.is_set() and time.monotonic() < deadline:
                    if bool((first != fill).any()):
                        cancel.set()
                    time.sleep(0.0001)

            watcher = threading.Thread(target=cancel_on_first_bytes, daemon=True)
            watcher.start()
            try:
                netloader.load(state_dict, server.endpoint, rendezvous=rendezvous, window=8,
                               cancel=cancel)
                cancelled = False
            except netloader.Cancelled:
                cancelled = True
            cancel.set()
            watcher.join()
            if cancelled:
                break
        assert cancelled, "every load finished before its cancel was seen"
        after_cancel = {k: r.clone() for k, r in raw.items()}
        assert any(not bool((r == fill).all()) for r in after_cancel.values())
        again = empty_like_layout(model)
        netloader.load(again, server.endpoint, rendezvous=rendezvous, window=8)
    for name, tensor in from_disk(model).items():
        assert torch.equal(again[name], tensor), name
    changed = [k for k, r in raw.items() if not torch.equal(r, after_cancel[k])]
    assert not changed, f"written after the cancelled load returned: {changed[:5]}"


def test_a_cancel_event_stops_a_load_with_cancelled(model):
    silent = socket.socket()  # accepts the connection, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(netloader.Cancelled, match="cancelled"):
        netloader.load(empty_like_layout(model), f"tcp://127.0.0.1:{silent.getsockname()[1]}",
                       register_timeout=60, cancel=cancel)
    assert time.monotonic() - start < 30, "the load waited out its register deadline"
    silent.close()
    with pytest.raises(TypeError, match="threading.Event"):
        netloader.load(empty_like_layout(model), "tcp://127.0.0.1:9", cancel=True)


def test_log_lines_go_to_python_logging(model, caplog, rendezvous):
    netloader.set_log_level("info")
    try:
        with caplog.at_level(logging.INFO, logger="netloader"):
            with netloader.Server(from_disk(model), rendezvous=rendezvous) as server:
                endpoint = server.endpoint
            with pytest.raises(netloader.Unavailable):
                netloader.load(empty_like_layout(model), "tcp://127.0.0.1:9")
    finally:
        netloader.set_log_level("warn")
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert any(level == logging.INFO and f"at {endpoint}" in message
               for _, level, message in lines), lines
    assert any(level == logging.WARNING and "tcp://127.0.0.1:9 failed" in message
               for _, level, message in lines), lines
    assert all(name == "netloader" for name, _, _ in lines)


def test_the_extra_config_parser_is_the_engines_own(tmp_path):
    config = netloader.parse_loader_config(
        '{"SOURCE": [{"device_id": 1, "sources": ["10.0.0.5:7001"]}], "LISTEN_PORT": 7000, '
        '"MODEL": "org/llama@rev", "STALL_TIMEOUT": 2.5, "TENSORS": ["model.layers.*"]}', 2)
    assert config["sources"] == {1: ["tcp://10.0.0.5:7001"]}
    assert config["listen_port"] == 7000 and config["model_id"] == "org/llama@rev"
    assert config["stall_timeout"] == 2.5 and config["tensors"] == ["model.layers.*"]
    assert config["chunk_mib"] == 1 and config["fanout"] == 1 and config["serve"] is True
    assert netloader.parse_loader_config({"WINDOW": 8})["window"] == 8
    file = tmp_path / "netloader.json"
    file.write_text('{"WINDOW": 2, "FANOUT": 3}')
    both = netloader.parse_loader_config({"CONFIG_FILE": str(file), "WINDOW": 6})
    assert both["window"] == 6 and both["fanout"] == 3  # inline wins over the file
    for wrong, named in (({"LISTEN_PORT": -1}, "LISTEN_PORT"), ({"SOURSE": []}, "SOURSE"),
                         ({"SOURCE": [{"device_id": 2, "sources": ["h:1"]}]}, "device_id"),
                         ("[1, 2]", "JSON object")):
        with pytest.raises(netloader.InvalidArgument, match=named):
            netloader.parse_loader_config(wrong, 2)
    with pytest.raises(netloader.NotFound, match="missing.json"):
        netloader.parse_loader_config({"CONFIG_FILE": str(tmp_path / "missing.json")})
    assert "OUTPUT_PREFIX" in netloader.loader_config_help()
    assert netloader.tensor_pattern_matches("model.layers.*.mlp.*", "model.layers.3.mlp.up")
    assert not netloader.tensor_pattern_matches("lm_head.?", "lm_head.weight")
    # '?' is one character, not one byte, for names beyond ASCII too (PROTOCOL.md 4.2.1).
    assert netloader.tensor_pattern_matches("层.?.权重", "层.0.权重")
    assert netloader.tensor_pattern_matches("?", "é")
    assert not netloader.tensor_pattern_matches("??", "é")


def test_a_ranks_options_are_the_engines_own():
    """options_for_rank: the library's OptionsForRank, as netloader-llama derives a rank's server
    and load from the extra config, given as keyword arguments of Server and load."""
    config = {"SOURCE": [{"device_id": 1, "sources": ["10.0.0.5:7001", "tcp://10.0.0.6:7001"]}],
              "LISTEN_PORT": 7000, "LISTEN_HOST": "0.0.0.0", "MODEL": "org/llama@rev",
              "REGISTER_TIMEOUT": 90, "STALL_TIMEOUT": 2.5, "WINDOW": 8, "STRIPE": 2,
              "MAX_CLIENTS": 2, "CHUNK_MIB": 2, "FANOUT": 3, "RENDEZVOUS": "file:/tmp/rv",
              "INTERFACE": "eth0"}
    partition = {"tp_size": 2, "tp_rank": 1, "layout_key": "netloader-llama/test"}
    rank = netloader.options_for_rank(config, 2, 1, partition)
    server, load = rank["server"], rank["load"]
    # Exactly keyword arguments of Server and load; the secret stays the caller's.
    assert set(server) == {"listen", "advertise", "model_id", "partition", "window", "max_clients",
                           "chunk_bytes", "fanout", "connect_timeout", "stall_timeout",
                           "heartbeat_timeout", "rendezvous", "interface", "mpi_helpers",
                           "registry", "topology"}
    assert set(server) <= set(inspect.signature(netloader.Server).parameters)
    assert set(load) == {"sources", "model_id", "partition", "window", "register_timeout",
                         "connect_timeout", "stall_timeout", "busy_timeout", "heartbeat_timeout",
                         "cold_start_wait", "stripe", "rendezvous", "interface", "mpi_helpers",
                         "registry", "topology"}
    assert set(load) <= set(inspect.signature(netloader.load).parameters)
    assert server["listen"] == "tcp://0.0.0.0:7001"  # LISTEN_PORT + rank
    assert load["sources"] == ["tcp://10.0.0.5:7001", "tcp://10.0.0.6:7001"]
    assert load["register_timeout"] == 90.0 and load["busy_timeout"] >= load["register_timeout"]
    assert load["cold_start_wait"] == 300.0
    whole = {"tp_size": 2, "tp_rank": 1, "pp_size": 1, "pp_rank": 0,
             "layout_key": "netloader-llama/test"}
    for options in (server, load):
        assert options["partition"] == whole and options["model_id"] == "org/llama@rev"
        assert options["window"] == 8 and options["stall_timeout"] == 2.5
        assert options["rendezvous"] == "file:/tmp/rv" and options["interface"] == "eth0"
    assert server["max_clients"] == 2 and server["chunk_bytes"] == 2 << 20
    assert server["fanout"] == 3 and load["stripe"] == 2
    assert rank["relay"] is True  # SERVE (default), a RENDEZVOUS, no TENSORS

    first = netloader.options_for_rank(json.dumps(config), 2, 0, {"tp_size": 2})
    assert first["server"]["listen"] == "tcp://0.0.0.0:7000" and first["load"]["sources"] == []
    no_rendezvous = {key: value for key, value in config.items() if key != "RENDEZVOUS"}
    for changed in (dict(config, TENSORS=["model.layers.*"]), no_rendezvous,
                    dict(config, SERVE=False)):
        assert netloader.options_for_rank(changed, 2, 1, partition)["relay"] is False, changed
    assert netloader.options_for_rank(no_rendezvous, 2, 1, partition)["load"]["rendezvous"] is None
    # MPI in helpers: a relay needs no shared rendezvous.
    helpers = netloader.options_for_rank(dict(no_rendezvous, MPI_HELPERS=True), 2, 1, partition)
    assert helpers["relay"] is True
    assert helpers["server"]["mpi_helpers"] is True and helpers["load"]["mpi_helpers"] is True
    assert rank["server"]["mpi_helpers"] is False  # the default
    fleet = netloader.options_for_rank(dict(config, REGISTRY="http://10.0.0.2:2379/a",
                                            TOPOLOGY="rack-1"), 2, 1, partition)
    for side in ("server", "load"):
        assert fleet[side]["registry"] == "http://10.0.0.2:2379/a", side
        assert fleet[side]["topology"] == "rack-1", side
    assert rank["load"]["registry"] is None

    # The defaults are parse_loader_config's: one parser, one set of defaults.
    parsed = netloader.parse_loader_config({})
    default = netloader.options_for_rank({}, 1, 0, {})
    server, load = default["server"], default["load"]
    assert server["listen"] == f"tcp://{parsed['listen_host']}:0"  # no LISTEN_PORT: a free port
    assert load["sources"] == [] and default["relay"] is False
    for options in (server, load):
        for key in ("window", "connect_timeout", "stall_timeout", "heartbeat_timeout",
                    "interface"):
            assert options[key] == parsed[key], key
        assert options["model_id"] is None and parsed["model_id"] == ""
        assert options["rendezvous"] is None and parsed["rendezvous"] == ""
        assert options["partition"] == {"tp_size": 1, "tp_rank": 0, "pp_size": 1, "pp_rank": 0,
                                        "layout_key": ""}
        assert all(isinstance(options[k], float) for k in options if k.endswith("_timeout"))
    assert server["max_clients"] == parsed["max_clients"]
    assert server["fanout"] == parsed["fanout"]
    assert server["chunk_bytes"] == parsed["chunk_mib"] << 20
    assert load["register_timeout"] == parsed["register_timeout"]
    assert load["stripe"] == parsed["stripe"]
    assert load["busy_timeout"] >= load["register_timeout"]

    for wrong, named in ((({"LISTEN_PORT": -1}, 2, 0), "LISTEN_PORT"),
                         (({"SOURSE": []}, 1, 0), "SOURSE"),
                         (({}, 2, 2), "rank 2"), (({}, 1, -1), "rank -1")):
        with pytest.raises(netloader.InvalidArgument, match=named):
            netloader.options_for_rank(*wrong, {})
    with pytest.raises(ValueError, match="tp_sise"):
        netloader.options_for_rank({}, 1, 0, {"tp_sise": 2})
