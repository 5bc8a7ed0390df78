"""The PyTorch engine (examples/python/netloader_llama.py) against itself and the C++ engine: real
processes, real ZeroMQ and MPI, a real checkpoint written by netloader-make-llama. Greedy decoding
is the acceptance test vLLM-Ascend's Netloader uses: the same tokens, and here also the same
digest of every logit, whether the weights came from disk or from a peer."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

BIN = os.environ.get("NETLOADER_BIN_DIR", os.path.join(os.path.dirname(__file__), "../../build/bin"))
ENGINE = os.path.join(os.path.dirname(__file__), "../../examples/python/netloader_llama.py")
PROMPT = "The weights came from"
LAYOUT_KEY = "netloader-llama/vllm-tp-split-v1"  # what both engines declare


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama") / "model"
    done = subprocess.run([f"{BIN}/netloader-make-llama", "--output", str(path), "--size-mib", "8"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return path


def python_engine(checkpoint, *args):
    return [sys.executable, ENGINE, "--model", str(checkpoint), "--prompt", PROMPT,
            "--log-level", "warn", *args]


def cpp_engine(checkpoint, *args):
    return [f"{BIN}/netloader-llama", "--model", str(checkpoint), "--prompt", PROMPT,
            "--log-level", "warn", *args]


def mpirun(ranks, rendezvous, argv):
    """`argv` as an instance of `ranks` processes (on the shared `rendezvous`, if given)."""
    return ["/usr/bin/env", "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
            "OMPI_MCA_oob_tcp_if_include=lo", "OMPI_MCA_btl_tcp_if_include=lo", "mpirun",
            "--oversubscribe", "-np", str(ranks),
            *(["--ompi-server", rendezvous] if rendezvous else []), "-x", "PYTHONPATH", *argv]


def extra(rendezvous, sources=None, rank_sources=None, **keys):
    config = {"RENDEZVOUS": rendezvous, "AUTH": False, **keys}
    if sources:
        rank_sources = {0: sources}
    if rank_sources:
        config["SOURCE"] = [{"device_id": r, "sources": s} for r, s in rank_sources.items()]
    return ["--model-loader-extra-config", json.dumps(config)]


def report_of(argv, ranks=1):
    """Runs an engine to its end; its JSON line (a list of one per rank for `ranks` > 1)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["rank"] for line in lines] == list(range(ranks)), done.stdout + done.stderr
    return lines[0] if ranks == 1 else lines


class Serving:
    """An engine started with --keep-running: its report once it decoded, its endpoint, and on
    exit (SIGTERM) what it served."""

    def __init__(self, argv, ranks=1, wait=True):
        self.ranks = ranks
        self.process = subprocess.Popen(argv + ["--keep-running"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.final = None
        if wait:
            self.wait_for_reports()

    def wait_for_reports(self):
        """Until the engine decoded: its reports (rank 0 prints them in order)."""
        self.reports = [self.next_line() for _ in range(self.ranks)]
        self.report = self.reports[0]
        self.endpoints = [r["endpoint"] for r in self.reports]
        self.endpoint = self.endpoints[0]

    def _read(self):
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def next_line(self, seconds=180):
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            line = None
        if line is None:
            self.process.kill()
            raise AssertionError("the engine printed no report: " +
                                 self.process.communicate(timeout=30)[1])
        return line

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.finals = [self.next_line(60) for _ in range(self.ranks)]
            self.final = self.finals[0]
        finally:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def from_disk(checkpoint):
    """What each engine decodes with weights read from disk."""
    return {"python": report_of(python_engine(checkpoint, "--load-format", "safetensors")),
            "cpp": report_of(cpp_engine(checkpoint, "--load-format", "safetensors"))}


def same_output(report, reference):
    assert report["tokens"] == reference["tokens"]
    assert report["logits_digest"] == reference["logits_digest"]


def test_engine_decodes_bit_identically_from_disk_and_through_netloader(checkpoint, from_disk,
                                                                         rendezvous):
    assert from_disk["python"]["loaded_from"] == "disk"
    assert len(from_disk["python"]["tokens"]) == 16
    # A seed with no SOURCE loads from disk, saying why, and serves.
    with Serving(python_engine(checkpoint, *extra(rendezvous))) as seed:
        assert seed.report["loaded_from"] == "disk"
        assert seed.report["fallback_reason"] == "no SOURCE for rank 0"
        same_output(seed.report, from_disk["python"])
        loaded = report_of(python_engine(checkpoint, *extra(rendezvous, [seed.endpoint],
                                                            SERVE=False)))
    assert loaded["loaded_from"] == seed.endpoint
    assert loaded["bytes_pulled"] == loaded["bytes"]
    assert "fallback_reason" not in loaded
    same_output(loaded, from_disk["python"])
    assert seed.final["served"] == 1


def test_engines_find_each_other_in_the_registry_and_count_it_in_their_metrics(
        checkpoint, from_disk, rendezvous, etcd):
    """REGISTRY and METRICS_PORT: a C++ engine that finds no holder loads from disk, publishes
    itself and serves; a PyTorch engine with no SOURCE finds it in the registry and decodes as
    from disk; the seed's metrics count the bytes it sent and its own fallback."""
    import urllib.request
    from conftest import free_port

    metrics_port = free_port()
    with Serving(cpp_engine(checkpoint, *extra(rendezvous, REGISTRY=etcd.url,
                                               METRICS_PORT=metrics_port))) as seed:
        assert seed.report["loaded_from"] == "disk"
        assert "lists no holder" in seed.report["fallback_reason"]
        assert "cold start" in seed.report["fallback_reason"]
        etcd.wait_for_holders(1)  # it published itself as a relay, then as loaded
        assert [h["endpoint"] for h in etcd.holders()] == [seed.endpoint]
        loaded = report_of(python_engine(checkpoint, *extra(rendezvous, REGISTRY=etcd.url,
                                                            SERVE=False)))
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as answer:
            metrics = answer.read().decode()
    assert loaded["loaded_from"] == seed.endpoint
    same_output(loaded, from_disk["python"])
    assert 'netloader_fallbacks_total{reason="Unavailable"} 1' in metrics, metrics
    assert "netloader_build_info{" in metrics


def cold_burst(checkpoint, rendezvous, etcd, start, count):
    """`count` C++ engines with REGISTRY and no SOURCE, loading once `start` exists."""
    return [Serving(cpp_engine(checkpoint, *extra(rendezvous, REGISTRY=etcd.url),
                               "--testing-start-file", str(start)), wait=False)
            for _ in range(count)]


def check_cold_burst(engines, reference):
    """Exactly one engine read the checkpoint from storage, claiming that as a cold start; every
    other loaded it from a peer of the burst; all decode as from disk."""
    for engine in engines:
        engine.wait_for_reports()
        same_output(engine.report, reference)
    readers = [e for e in engines if e.report["loaded_from"] == "disk"]
    assert len(readers) == 1, [e.report for e in engines]
    assert "cold start" in readers[0].report["fallback_reason"], readers[0].report
    endpoints = {e.endpoint for e in engines}
    for engine in engines:
        if engine is not readers[0]:
            assert engine.report["loaded_from"] in endpoints - {engine.endpoint}, engine.report
            assert engine.report["bytes_pulled"] == engine.report["bytes"]


def test_a_cold_burst_reads_storage_once(checkpoint, from_disk, rendezvous, etcd, tmp_path):
    """Three engines start together and nobody holds the model: one claims the storage read in
    etcd and reads it, the others wait for it and load from the burst."""
    start = tmp_path / "start"
    engines = cold_burst(checkpoint, rendezvous, etcd, start, 3)
    try:
        start.write_text("")
        check_cold_burst(engines, from_disk["cpp"])
    finally:
        for engine in engines:
            engine.__exit__(None, None, None)


def test_a_reader_that_died_hands_the_storage_read_on(checkpoint, from_disk, rendezvous, etcd,
                                                      tmp_path):
    """An instance claimed the storage read and died (its claim lives until its lease expires):
    two engines starting meanwhile wait for it, then one of them claims the read, and the other
    loads from it."""
    with Serving(cpp_engine(checkpoint, *extra(rendezvous, REGISTRY=etcd.url))) as first:
        assert "cold start" in first.report["fallback_reason"]
        claims = etcd.keys("/netloader/readers/")
        assert list(claims.values()) == [first.endpoint], claims
    assert not etcd.keys("/netloader/readers/"), "a stopped reader's claim outlived it"
    etcd.put(next(iter(claims)), "tcp://127.0.0.1:9", ttl=3)  # claimed, then died
    start = tmp_path / "start"
    engines = cold_burst(checkpoint, rendezvous, etcd, start, 2)
    try:
        start.write_text("")
        began = time.monotonic()
        check_cold_burst(engines, from_disk["cpp"])
        assert time.monotonic() - began >= 1, "nobody waited for the claim to expire"
    finally:
        for engine in engines:
            engine.__exit__(None, None, None)


def test_a_chain_across_languages_decodes_and_copies_byte_identically(checkpoint, from_disk,
                                                                      rendezvous, tmp_path):
    # C++ engine (from disk) -> PyTorch engine -> C++ engine, and a C++ client writing files.
    with Serving(cpp_engine(checkpoint, *extra(rendezvous))) as first:
        same_output(first.report, from_disk["cpp"])
        with Serving(python_engine(checkpoint, *extra(rendezvous, [first.endpoint]))) as middle:
            assert middle.report["loaded_from"] == first.endpoint
            assert middle.report["relayed"] is True  # served while it loaded
            same_output(middle.report, from_disk["python"])
            last = report_of(cpp_engine(checkpoint, *extra(rendezvous, [middle.endpoint],
                                                           SERVE=False)))
            assert last["loaded_from"] == middle.endpoint
            same_output(last, from_disk["cpp"])
            out = tmp_path / "copy"
            done = subprocess.run(
                [f"{BIN}/netloader-client", "--source", middle.endpoint, "--model",
                 str(checkpoint), "--output", str(out), "--no-auth", "--rendezvous", rendezvous,
                 "--layout-key", LAYOUT_KEY, "--log-level", "warn"], capture_output=True,
                text=True, timeout=120, check=False)
            assert done.returncode == 0, done.stderr
    for name in os.listdir(checkpoint):
        if name.endswith(".safetensors"):
            assert (out / name).read_bytes() == (checkpoint / name).read_bytes(), name
    assert middle.final["served"] == 2 and middle.final["failed"] == 0
    assert first.final["served"] == 1


def test_every_failure_falls_back_to_disk_naming_its_cause(checkpoint, from_disk, rendezvous,
                                                          tmp_path):
    secret, other_secret = str(tmp_path / "secret"), str(tmp_path / "other-secret")
    seed_config = extra(rendezvous, MODEL="org/llama@a", AUTH=True, SECRET_FILE=secret)
    corrupt_argv = cpp_engine(checkpoint, *extra(rendezvous), "--testing-corrupt-served-weights")
    with Serving(python_engine(checkpoint, *seed_config)) as seed, \
            Serving(corrupt_argv) as corrupt:
        cases = {
            "nothing listens there": ({"SOURCE": ["127.0.0.1:9"]}, "Unavailable"),
            "another model": ({"SOURCE": [seed.endpoint], "MODEL": "org/llama@b",
                               "AUTH": True, "SECRET_FILE": secret}, "FingerprintMismatch"),
            "another secret": ({"SOURCE": [seed.endpoint], "MODEL": "org/llama@a",
                                "AUTH": True, "SECRET_FILE": other_secret}, "PermissionDenied"),
            "corrupt weights": ({"SOURCE": [corrupt.endpoint]}, "ChecksumMismatch"),
        }
        for case, (keys, cause) in cases.items():
            sources = keys.pop("SOURCE")
            report = report_of(python_engine(checkpoint,
                                             *extra(rendezvous, sources, SERVE=False, **keys)))
            assert report["loaded_from"] == "disk", case
            assert report["fallback_reason"].startswith(cause), (case, report["fallback_reason"])
            same_output(report, from_disk["python"])
        # The right model and secret: loaded from the seed.
        right = report_of(python_engine(checkpoint, *extra(
            rendezvous, [seed.endpoint], SERVE=False, MODEL="org/llama@a", AUTH=True,
            SECRET_FILE=secret)))
        assert right["loaded_from"] == seed.endpoint
        same_output(right, from_disk["python"])


def test_a_bad_extra_config_stops_start_up_naming_the_key(checkpoint):
    for config, named in (({"LISTEN_PORT": "7000"}, "LISTEN_PORT"),
                          ({"SOURSE": []}, "SOURSE"),
                          ({"SOURCE": [{"device_id": 1, "sources": ["h:1"]}]}, "device_id")):
        done = subprocess.run(
            python_engine(checkpoint, "--model-loader-extra-config", json.dumps(config)),
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2, (config, done.stderr)
        assert named in done.stderr, (config, done.stderr)
        assert done.stdout == "", "nothing may be decoded"
    done = subprocess.run(python_engine(checkpoint, "--help"), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "OUTPUT_PREFIX" in done.stdout and "SOURCE" in done.stdout


def load_each_rank_from(seed, rendezvous, argv):
    """The reports of an instance of two ranks (`argv`: an engine's) loading each rank from the
    matching rank of `seed`, serving nothing."""
    return report_of(mpirun(2, rendezvous, argv + extra(
        rendezvous, rank_sources={0: [seed.endpoints[0]], 1: [seed.endpoints[1]]},
        SERVE=False)), ranks=2)


def test_tp2_ranks_load_from_the_cpp_engines_matching_ranks_and_decode_as_from_disk(
        checkpoint, rendezvous):
    """Both engines shard the same way: each Python rank's weights, checked against the C++
    rank's digests, decode exactly as the Python ranks' own slices read from disk."""
    tp2 = ["--tensor-parallel-size", "2"]
    reference = report_of(mpirun(2, None, python_engine(checkpoint, *tp2, "--load-format",
                                                        "safetensors")), ranks=2)
    with Serving(mpirun(2, rendezvous, cpp_engine(checkpoint, *tp2, *extra(rendezvous))),
                 ranks=2) as seed:
        loaded = load_each_rank_from(seed, rendezvous, python_engine(checkpoint, *tp2))
    for rank in (0, 1):
        assert loaded[rank]["loaded_from"] == seed.endpoints[rank]
        assert loaded[rank]["tp_rank"] == rank
        assert loaded[rank]["bytes_pulled"] == loaded[rank]["bytes"] == reference[rank]["bytes"]
        same_output(loaded[rank], reference[rank])
    assert [f["served"] for f in seed.finals] == [1, 1]


def test_pp2_stages_serve_the_cpp_engines_matching_stages_and_decode_as_tp1(
        checkpoint, from_disk, rendezvous):
    """A Python instance of two pipeline stages, from disk, serves each stage's layers to the
    matching stage of a C++ instance; pipeline parallelism changes no arithmetic, so both decode
    exactly as their one-process disk runs."""
    pp2 = ["--pipeline-parallel-size", "2"]
    with Serving(mpirun(2, rendezvous, python_engine(checkpoint, *pp2, *extra(rendezvous))),
                 ranks=2) as seed:
        for stage in seed.reports:
            assert stage["loaded_from"] == "disk"
            same_output(stage, from_disk["python"])
        # Each stage holds its own tensors: the first the embedding, the last the norm and head.
        assert seed.reports[0]["bytes"] != seed.reports[1]["bytes"]
        loaded = load_each_rank_from(seed, rendezvous, cpp_engine(checkpoint, *pp2))
    for rank in (0, 1):
        assert loaded[rank]["loaded_from"] == seed.endpoints[rank]
        same_output(loaded[rank], from_disk["cpp"])
    assert [f["served"] for f in seed.finals] == [1, 1]
