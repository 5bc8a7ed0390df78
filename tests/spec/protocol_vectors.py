#!/usr/bin/python3
"""A second implementation of PROTOCOL.md's digests and chunk plan, in Python, sharing no code
with the C++ library: the hashes come from the xxhsum program (Debian package xxhash).

  protocol_vectors.py write-checkpoint PATH   writes the tiny test-vector checkpoint
  protocol_vectors.py compute CHECKPOINT      prints its vectors as JSON
  protocol_vectors.py check CHECKPOINT JSON   exits 1 unless the vectors equal JSON's

tests/data/protocol-vectors.{safetensors,json} were made with the first two; CI runs the third,
and the C++ unit test ProtocolVectorsTest checks the library against the same JSON.
"""

import json
import struct
import subprocess
import sys

CHUNK_BYTES = 4096  # the smallest chunk size a server may use (PROTOCOL.md, "Limits")

DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def xxh3_64(data):
    out = subprocess.run(["xxhsum", "-H3", "-"], input=data, capture_output=True, check=True)
    return out.stdout.decode().split("=")[-1].strip()  # "XXH3 (stdin) = 16 hex digits"


def xxh3_128(data):
    out = subprocess.run(["xxhsum", "-H2", "-"], input=data, capture_output=True, check=True)
    return out.stdout.decode().split()[0]  # high 64 bits first, then low: 32 hex digits


def u64(value):
    return struct.pack("<Q", value)


def write_checkpoint(path):
    # Every edge case of the chunk plan at CHUNK_BYTES: a tensor split into slices with a short
    # last one, a small tensor right after it, zero-byte tensors inside a coalesced run (two at
    # one offset, listed in the header out of name order), a run closed because the next tensor
    # does not fit, a tensor of exactly one chunk, a scalar, and a zero-byte tensor at the end.
    specs = [("embed", "F32", [2500]), ("norm", "BF16", [50]), ("empty.z", "F32", [0]),
             ("empty.a", "U8", [0, 3]), ("bias", "I16", [100]), ("scale", "F64", []),
             ("mask", "BOOL", [3900]), ("exact", "U8", [4096]), ("tail", "I8", [7]),
             ("empty.end", "U8", [0, 5])]
    header = {"__metadata__": {"format": "pt", "purpose": "netloader PROTOCOL.md test vectors"}}
    offset = 0
    for name, dtype, shape in specs:
        size = DTYPE_SIZES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = bytes((i * 131 + 17) % 251 for i in range(offset))
    with open(path, "wb") as f:
        f.write(u64(len(text)) + text + data)


def read_checkpoint(path):
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = blob[8 + header_len:]
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        tensors.append({"name": name, "dtype": entry["dtype"], "shape": entry["shape"],
                        "begin": begin, "end": end})
    # Storage order: by data offsets, then (for zero-byte tensors at one offset) by name bytes.
    tensors.sort(key=lambda t: (t["begin"], t["end"], t["name"].encode()))
    for t in tensors:
        t["bytes"] = data[t["begin"]:t["end"]]
    return tensors


def table_digest(tensors):
    encoded = u64(len(tensors))
    for t in tensors:
        name, dtype = t["name"].encode(), t["dtype"].encode()
        encoded += u64(len(name)) + name + u64(len(dtype)) + dtype + u64(len(t["shape"]))
        for dim in t["shape"]:
            encoded += u64(dim)
        encoded += u64(len(t["bytes"]))
    return xxh3_128(encoded)


def chunk_plan(sizes, chunk_bytes):
    plan, group, group_bytes = [], None, 0
    for index, size in enumerate(sizes):
        if size == 0:
            continue  # carries no data; does not close a run
        if size >= chunk_bytes:
            group = None
            for offset in range(0, size, chunk_bytes):
                plan.append([[index, offset, min(chunk_bytes, size - offset)]])
            continue
        if group is None or group_bytes + size > chunk_bytes:
            group, group_bytes = [], 0
            plan.append(group)
        group.append([index, 0, size])
        group_bytes += size
    return plan


def compute(path):
    tensors = read_checkpoint(path)
    plan = chunk_plan([len(t["bytes"]) for t in tensors], CHUNK_BYTES)
    chunk_digests = []
    for chunk in plan:
        payload = b"".join(tensors[i]["bytes"][o:o + n] for i, o, n in chunk)
        chunk_digests.append(xxh3_64(payload))
    model = xxh3_64(b"".join(u64(int(d, 16)) for d in chunk_digests))
    return {
        "checkpoint": "tests/data/protocol-vectors.safetensors",
        "chunk_bytes": CHUNK_BYTES,
        "storage_order": [t["name"] for t in tensors],
        "table_digest": table_digest(tensors),
        "tensor_digests": [xxh3_64(t["bytes"]) for t in tensors],
        "chunks": [{"pieces": chunk, "digest": d} for chunk, d in zip(plan, chunk_digests)],
        "model_digest": model,
    }


def main(argv):
    if len(argv) == 3 and argv[1] == "write-checkpoint":
        write_checkpoint(argv[2])
    elif len(argv) == 3 and argv[1] == "compute":
        print(json.dumps(compute(argv[2]), indent=1))
    elif len(argv) == 4 and argv[1] == "check":
        with open(argv[3]) as f:
            expected = json.load(f)
        actual = compute(argv[2])
        if actual != expected:
            for key in expected:
                if actual.get(key) != expected[key]:
                    print(f"{key}: computed {actual.get(key)!r}, {argv[3]} says {expected[key]!r}")
            return 1
        print(f"{len(actual['chunks'])} chunks, table {actual['table_digest']}, "
              f"model {actual['model_digest']}: as {argv[3]} says")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
