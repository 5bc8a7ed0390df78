#!/usr/bin/python3
"""The Python binding against the C++ client, paired: one netloader-server over CHECKPOINT, then
REPS rounds of a netloader-client --verify-only load and a Python netloader.load() into
netloader.allocate()'d tensors, each in a fresh process. Compares the loads' own seconds (Load's
LoadStats.seconds: registration to the last chunk verified; MPI start-up excluded), round by round.

Usage: scripts/bench-python.py CHECKPOINT [--reps N] [--mpi-helpers] [--build DIR]
Run as root it sets Open MPI's run-as-root variables. Needs Debian's /usr/bin/python3 with
python3-torch (netloader.allocate makes torch tensors)."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LOAD = """
import json, sys
sys.path.insert(0, {python!r})
import netloader
tensors = netloader.allocate({checkpoint!r})
stats = netloader.load(tensors, {endpoint!r}, mpi_helpers={helpers!r})
print(json.dumps({{"seconds": stats["seconds"], "bytes": stats["bytes"]}}))
"""


def last_json_line(done, what):
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}): {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mpi-helpers", action="store_true")
    parser.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "../build"))
    args = parser.parse_args()
    binary = os.path.join(args.build, "bin")
    helpers = ["--mpi-helpers"] if args.mpi_helpers else []
    os.environ.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as tmp:
        endpoint_file = os.path.join(tmp, "endpoint")
        server = subprocess.Popen(
            [f"{binary}/netloader-server", "--model", args.checkpoint, "--no-auth",
             "--endpoint-file", endpoint_file, "--log-level", "warn", *helpers],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while not os.path.exists(endpoint_file):
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("netloader-server did not start: " + server.stderr.read())
                time.sleep(0.05)
            endpoint = open(endpoint_file).read().strip()
            code = LOAD.format(python=os.path.join(args.build, "python"),
                               checkpoint=args.checkpoint, endpoint=endpoint,
                               helpers=args.mpi_helpers)
            cpp, python = [], []
            for _ in range(args.reps):
                cpp.append(last_json_line(subprocess.run(
                    [f"{binary}/netloader-client", "--source", endpoint, "--model",
                     args.checkpoint, "--verify-only", "--no-auth", "--json", *helpers],
                    capture_output=True, text=True, timeout=600), "netloader-client")
                    ["load_seconds"])
                python.append(last_json_line(subprocess.run(
                    ["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                    timeout=600), "the Python load")["seconds"])
        finally:
            server.terminate()
            server.wait(timeout=60)
    ratios = [p / c for p, c in zip(python, cpp)]
    print(f"MPI {'in helpers' if args.mpi_helpers else 'in process'}, {args.reps} rounds")
    print("C++ client, s:   " + " ".join(f"{s:.3f}" for s in cpp))
    print("Python load, s:  " + " ".join(f"{s:.3f}" for s in python))
    print(f"Python / C++: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}), paired by round")


if __name__ == "__main__":
    main()
