"""What the Python tests share: one MPI rendezvous for every process of a run, and an etcd for
the tests of the registry."""

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest


@pytest.fixture(scope="session")
def rendezvous(tmp_path_factory):
    """One shared MPI rendezvous (ompi-server) for every process of the run: a process's MPI is
    bound to one for its lifetime, and a test process loads from several servers and serves."""
    uri = tmp_path_factory.mktemp("rendezvous") / "uri"
    env = dict(os.environ, OMPI_MCA_oob_tcp_if_include="lo")
    server = subprocess.Popen(["ompi-server", "--no-daemonize", "-r", str(uri)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (uri.exists() and uri.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert uri.exists(), "ompi-server did not start"
    yield f"file:{uri}"
    server.terminate()
    server.wait(timeout=30)


def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(text):
    return base64.b64encode(text.encode()).decode()


class Etcd:
    """A registry as a fleet runs one: Debian's etcd, a cluster of one on free loopback ports,
    its data in `directory`. `url` is its client URL; `holders()` the netloader records in it."""

    def __init__(self, directory):
        self.url, peer = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
        self.process = subprocess.Popen(
            ["etcd", "--name", "r", "--data-dir", str(directory), "--listen-client-urls",
             self.url, "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"r={peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def call(self, path, **body):
        """POSTs `body` (JSON) to etcd's gateway at /v3/`path`; its JSON answer."""
        request = urllib.request.Request(f"{self.url}/v3/{path}", method="POST",
                                         data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())

    def keys(self, prefix):
        """{key: value} of every key under `prefix` (text); {} while etcd is not up."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        try:
            kvs = self.call("kv/range", key=b64(prefix), range_end=b64(end)).get("kvs", [])
        except OSError:
            return {}
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
                for kv in kvs}

    def put(self, key, value, ttl=None):
        """Writes `key`; with `ttl`, under a new lease of that many seconds that nobody renews."""
        body = {"key": b64(key), "value": b64(value)}
        if ttl is not None:
            body["lease"] = self.call("lease/grant", TTL=ttl)["ID"]
        self.call("kv/put", **body)

    def holders(self):
        """The values under /netloader/holders/ (JSON records); [] while etcd is not up."""
        return [json.loads(v) for v in self.keys("/netloader/holders/").values()]

    def wait_for_holders(self, count, seconds=30):
        """Until `count` holders are ready (hold every byte); a bounded wait."""
        deadline = time.monotonic() + seconds
        while sum(h["state"] == "ready" for h in self.holders()) < count:
            assert time.monotonic() < deadline, f"fewer than {count} ready holders in etcd"
            time.sleep(0.1)

    def stop(self):
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def etcd(tmp_path):
    registry = Etcd(tmp_path / "etcd")
    yield registry
    registry.stop()

