"""What the Python tests share: one MPI rendezvous for every process of a run."""

import os
import subprocess
import time

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
