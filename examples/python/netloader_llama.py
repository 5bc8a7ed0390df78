#!/usr/bin/python3
"""netloader_llama.py: the example engine in PyTorch, with a vLLM-style --load-format=netloader.

The same Llama architecture as the C++ netloader-llama (token embedding, RMSNorm, grouped-query
attention with rotary embedding and a KV cache, SwiGLU MLP, LM head; float32 on CPU), on the
checkpoints netloader-make-llama writes, decoding a prompt greedily. It runs tensor- and
pipeline-parallel as netloader-llama does, N = tp x pp ranks under mpirun (mpi4py), sharding the
weights the same way, so that its ranks exchange weights with netloader-llama's matching ranks
and with other instances of itself.

  --load-format safetensors   read this rank's shards from disk;
  --load-format netloader     fill each rank from its SOURCE in --model-loader-extra-config (the
                              same keys and strict rules as netloader-llama: one parser),
                              falling back to disk per rank for any reason, then serve;
  --load-format auto          netloader if --model-loader-extra-config is given.

Prints one JSON line per rank (rank 0 prints them all, in rank order): where the weights came
from (loaded_from, fallback_reason), the generated tokens and text, and logits_digest (SHA-256 of
every logit computed: two runs agree only if every weight they used was bit-identical). Run with
Debian's /usr/bin/python3 and PYTHONPATH at the netloader package (build/python, or the
installed dist-packages); multi-rank: mpirun --ompi-server file:PATH -np N, with RENDEZVOUS
file:PATH in the extra config (README, "The PyTorch engine").
"""

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time

import torch

import netloader

# The sharding scheme netloader-llama declares in its fingerprint (llama.h kLayoutKey): instances
# exchange weights only when they shard the same way.
LAYOUT_KEY = "netloader-llama/vllm-tp-split-v1"
FIRST, LAST = -1, -2  # owners of the first / last pipeline stage's tensors


class EngineError(Exception):
    """A problem with the command line or the checkpoint: printed, exit status 2 or 3."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class Parallel:
    """Where this process sits in its instance: rank = pp_rank * tp_size + tp_rank."""

    def __init__(self, tp_size=1, pp_size=1, rank=0):
        self.tp_size, self.pp_size = tp_size, pp_size
        self.tp_rank, self.pp_rank = rank % tp_size, rank // tp_size
        self.rank, self.world = rank, tp_size * pp_size
        self.first_stage, self.last_stage = self.pp_rank == 0, self.pp_rank == pp_size - 1

    def partition(self):
        return {"tp_size": self.tp_size, "tp_rank": self.tp_rank, "pp_size": self.pp_size,
                "pp_rank": self.pp_rank, "layout_key": LAYOUT_KEY}


def read_model_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise EngineError(f"model config {path}: {e}", 3) from e
    config = {}
    for key, kind in (("hidden_size", int), ("num_hidden_layers", int),
                      ("num_attention_heads", int), ("num_key_value_heads", int),
                      ("intermediate_size", int), ("vocab_size", int),
                      ("rms_norm_eps", float), ("rope_theta", float)):
        value = raw.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise EngineError(f"{path}: '{key}' is missing or not a positive number", 3)
        config[key] = kind(value)
    if raw.get("tie_word_embeddings", False):
        raise EngineError(f"{path}: tie_word_embeddings must be false", 3)
    if config["hidden_size"] % config["num_attention_heads"] or \
            config["num_attention_heads"] % config["num_key_value_heads"]:
        raise EngineError(f"{path}: heads do not divide hidden_size / each other", 3)
    config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    return config


def expected_tensors(c):
    """name -> (shape, split dim, owner): dim 0 for column-parallel weights (q/k/v/gate/up, the
    embedding and LM head, split by rows), 1 for row-parallel ones (o/down), -1 replicated
    (norms); the owner is a layer, or FIRST / LAST for the first / last pipeline stage."""
    d, v, i, hd = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": ([v, d], 0, FIRST), "model.norm.weight": ([d], -1, LAST),
           "lm_head.weight": ([v, d], 0, LAST)}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out.update({p + "input_layernorm.weight": ([d], -1, layer),
                    p + "self_attn.q_proj.weight": ([q, d], 0, layer),
                    p + "self_attn.k_proj.weight": ([kv, d], 0, layer),
                    p + "self_attn.v_proj.weight": ([kv, d], 0, layer),
                    p + "self_attn.o_proj.weight": ([d, q], 1, layer),
                    p + "post_attention_layernorm.weight": ([d], -1, layer),
                    p + "mlp.gate_proj.weight": ([i, d], 0, layer),
                    p + "mlp.up_proj.weight": ([i, d], 0, layer),
                    p + "mlp.down_proj.weight": ([d, i], 1, layer)})
    return out


def plan_shards(model_dir, config, par):
    """The weights this rank holds, in the checkpoint's storage order, as netloader-llama's
    PlanShards shards them: dicts with name, file, offset, full_shape, split_dim, start (along
    split_dim) and shape (this rank's part). The checkpoint must hold exactly the tensors the
    config needs, float32; errors name what is not so, or the size that does not divide."""
    for what, by, kind in (("vocab_size", par.tp_size, "tensor"),
                           ("num_attention_heads", par.tp_size, "tensor"),
                           ("num_key_value_heads", par.tp_size, "tensor"),
                           ("intermediate_size", par.tp_size, "tensor"),
                           ("num_hidden_layers", par.pp_size, "pipeline")):
        if config[what] % by:
            raise EngineError(f"{what} {config[what]} is not divisible by the {kind}-parallel "
                              f"size {by}", 3)
    per_stage = config["num_hidden_layers"] // par.pp_size
    first_layer = par.pp_rank * per_stage
    expected = expected_tensors(config)
    plan = []
    try:
        layout = netloader.read_layout(model_dir)
    except netloader.Error as e:
        raise EngineError(str(e), 3) from e
    for t in layout:
        if t["name"] not in expected:
            raise EngineError(f"{t['file']}: unexpected tensor '{t['name']}' for this config", 3)
        shape, split_dim, owner = expected.pop(t["name"])
        if t["dtype"] != "F32" or list(t["shape"]) != shape:
            raise EngineError(f"tensor '{t['name']}' is {t['dtype']} {t['shape']}; the config "
                              f"needs F32 {shape}", 3)
        mine = (par.first_stage if owner == FIRST else par.last_stage if owner == LAST
                else first_layer <= owner < first_layer + per_stage)
        if not mine:
            continue
        part, start = list(shape), 0
        if split_dim >= 0:
            part[split_dim] //= par.tp_size
            start = part[split_dim] * par.tp_rank
        plan.append({"name": t["name"], "file": t["file"], "offset": t["offset"],
                     "full_shape": shape, "split_dim": split_dim, "start": start, "shape": part})
    if expected:
        raise EngineError(f"checkpoint lacks tensor '{sorted(expected)[0]}' (and "
                          f"{len(expected) - 1} more) that the config needs", 3)
    return plan


def _pread_into(fd, buffer, offset, path):
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise EngineError(f"reading {path} at byte {offset + done}: file too short", 3)
        done += n


def read_shards(plan, weights, skip=()):
    """Fills this rank's weights from the checkpoint files `plan` names, but those in `skip`."""
    fds = {}
    try:
        for s in plan:
            if s["name"] in skip:
                continue
            if s["file"] not in fds:
                try:
                    fds[s["file"]] = os.open(s["file"], os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise EngineError(f"opening {s['file']}: {e.strerror}", 3) from e
            fd, out = fds[s["file"]], weights[s["name"]].numpy()
            if s["split_dim"] == 1:  # a block of columns: read the whole tensor, keep its part
                whole = torch.empty(s["full_shape"], dtype=torch.float32).numpy()
                _pread_into(fd, whole, s["offset"], s["file"])
                out[...] = whole[:, s["start"]:s["start"] + s["shape"][1]]
            else:  # whole, or a contiguous block of rows
                row_bytes = 4 * s["full_shape"][1] if len(s["full_shape"]) == 2 else 0
                _pread_into(fd, out, s["offset"] + s["start"] * row_bytes, s["file"])
    finally:
        for fd in fds.values():
            os.close(fd)


class LocalComm:
    """The collectives of an instance of one process: none."""

    def all_reduce_tp(self, x):
        return x

    def gather_tp(self, x):
        return x

    def send_next_stage(self, x):
        pass

    def recv_prev_stage(self, count):
        raise AssertionError("one process has no previous stage")

    def from_last(self, value):
        return value

    def from_first(self, value):
        return value

    def gather_to_first(self, value):
        return [value]

    def wait_for_turn(self):
        pass

    def pass_turn(self):
        pass

    def abort(self, status):
        sys.exit(status)


class MpiComm:
    """MPI_COMM_WORLD split into tensor-parallel groups (mpi4py), as netloader-llama's MpiComm:
    plain blocking MPI calls; if one rank dies, mpirun takes the instance down."""

    def __init__(self, mpi, par):
        self.mpi, self.par, self.world = mpi, par, mpi.COMM_WORLD
        self.tp = self.world.Split(color=par.pp_rank, key=par.tp_rank)

    def all_reduce_tp(self, x):  # in place; x is a contiguous float32 tensor
        if self.par.tp_size > 1:
            self.tp.Allreduce(self.mpi.IN_PLACE, x.numpy(), op=self.mpi.SUM)
        return x

    def gather_tp(self, x):  # every rank's part, in tensor-parallel rank order
        if self.par.tp_size == 1:
            return x
        out = torch.empty(x.numel() * self.par.tp_size, dtype=x.dtype)
        self.tp.Allgather(x.numpy(), out.numpy())
        return out

    def send_next_stage(self, x):
        self.world.Send(x.numpy(), dest=self.par.rank + self.par.tp_size, tag=7)

    def recv_prev_stage(self, count):
        x = torch.empty(count, dtype=torch.float32)
        self.world.Recv(x.numpy(), source=self.par.rank - self.par.tp_size, tag=7)
        return x

    def from_last(self, value):  # the last stage's first rank's value, on every rank
        return self.world.bcast(value, root=(self.par.pp_size - 1) * self.par.tp_size)

    def from_first(self, value):
        return self.world.bcast(value, root=0)

    def gather_to_first(self, value):  # every rank's value on rank 0, in rank order
        return self.world.gather(value, root=0) or []

    # A turn passed along the ranks in order: rank r > 0 waits for rank r - 1 to pass it.
    def wait_for_turn(self):
        if self.par.rank > 0:
            self.world.recv(source=self.par.rank - 1, tag=8)

    def pass_turn(self):
        if self.par.rank + 1 < self.par.world:
            self.world.send(None, dest=self.par.rank + 1, tag=8)

    def abort(self, status):
        sys.stderr.flush()
        self.world.Abort(status)


class Llama:
    """Greedy decoding over this rank's weights (a dict of the checkpoint's names), cooperating
    with the instance's other ranks through `comm` as netloader-llama does: row-parallel layers
    all-reduce their partial sums, the embedding is split by vocabulary, the last stage gathers
    the logits."""

    def __init__(self, config, par, weights, comm):
        self.c, self.par, self.w, self.comm = config, par, weights, comm
        hd = config["head_dim"]
        self.inv_freq = config["rope_theta"] ** (-2.0 * torch.arange(hd // 2, dtype=torch.float32)
                                                 / hd)
        self.layer_count = config["num_hidden_layers"] // par.pp_size
        self.first_layer = par.pp_rank * self.layer_count

    def _norm(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean() + self.c["rms_norm_eps"]) * weight

    def _rope(self, heads, position):  # Hugging Face "rotate half", heads: [n, head_dim]
        angle = position * self.inv_freq
        cos, sin = torch.cos(angle), torch.sin(angle)
        a, b = heads.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    def _layer(self, layer, x, position, cache):
        c, w, p, t = self.c, self.w, f"model.layers.{layer}.", self.par.tp_size
        hd = c["head_dim"]
        heads, kv_heads = c["num_attention_heads"] // t, c["num_key_value_heads"] // t
        h = self._norm(x, w[p + "input_layernorm.weight"])
        q = self._rope((w[p + "self_attn.q_proj.weight"] @ h).view(heads, hd), position)
        k = self._rope((w[p + "self_attn.k_proj.weight"] @ h).view(kv_heads, hd), position)
        v = (w[p + "self_attn.v_proj.weight"] @ h).view(kv_heads, hd)
        keys_so_far, values_so_far = cache[layer - self.first_layer]
        keys_so_far.append(k)
        values_so_far.append(v)
        keys = torch.stack(keys_so_far, dim=1)  # [kv_heads, positions, hd]
        values = torch.stack(values_so_far, dim=1)
        group = heads // kv_heads  # this rank's heads use this rank's kv heads
        keys = keys.repeat_interleave(group, dim=0)
        values = values.repeat_interleave(group, dim=0)
        scores = torch.softmax((keys @ q.unsqueeze(-1)).squeeze(-1) / hd ** 0.5, dim=-1)
        attn = (scores.unsqueeze(1) @ values).reshape(heads * hd)
        x = x + self.comm.all_reduce_tp(w[p + "self_attn.o_proj.weight"] @ attn)
        h = self._norm(x, w[p + "post_attention_layernorm.weight"])
        gate = w[p + "mlp.gate_proj.weight"] @ h
        up = w[p + "mlp.up_proj.weight"] @ h
        down = w[p + "mlp.down_proj.weight"] @ (torch.nn.functional.silu(gate) * up)
        return x + self.comm.all_reduce_tp(down)

    def _forward(self, token, position, cache, digest):
        d = self.c["hidden_size"]
        if self.par.first_stage:
            # Split by vocabulary: the rank holding the token's row contributes it.
            vocab = self.c["vocab_size"] // self.par.tp_size
            row = token - vocab * self.par.tp_rank
            x = torch.zeros(d, dtype=torch.float32)
            if 0 <= row < vocab:
                x.copy_(self.w["model.embed_tokens.weight"][row])
            x = self.comm.all_reduce_tp(x)
        else:
            x = self.comm.recv_prev_stage(d)
        for layer in range(self.first_layer, self.first_layer + self.layer_count):
            x = self._layer(layer, x, position, cache)
        next_token = 0
        if self.par.last_stage:
            logits = self.comm.gather_tp(
                self.w["lm_head.weight"] @ self._norm(x, self.w["model.norm.weight"]))
            digest.update(logits.numpy().tobytes())
            next_token = int(torch.argmax(logits))  # ties: the lowest index
        else:
            self.comm.send_next_stage(x.contiguous())
        return self.comm.from_last(next_token)

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens):
        """The new tokens and the digest of every logit; every rank of the instance calls it."""
        cache = [([], []) for _ in range(self.layer_count)]
        digest = hashlib.sha256()
        position, tokens, token = 0, [], 0
        for t in prompt:
            token = self._forward(t, position, cache, digest)
            position += 1
        for i in range(max_new_tokens):
            tokens.append(token)
            if i + 1 < max_new_tokens:
                token = self._forward(token, position, cache, digest)
                position += 1
        return tokens, self.comm.from_last(digest.hexdigest()[:16])


def detokenize(tokens):
    """Byte tokens as netloader-llama prints them: printable ASCII, else \\xNN or <id>."""
    out = []
    for t in tokens:
        if 32 <= t < 127 and t != ord("\\"):
            out.append(chr(t))
        elif t < 256:
            out.append(f"\\x{t:02x}")
        else:
            out.append(f"<{t}>")
    return "".join(out)


class Turn:
    """The ranks connect to their sources one after another (rank r once rank r - 1 has),
    because Open MPI can wedge two connects between the same two mpirun jobs made at the same
    moment (DESIGN.md, "Multi-rank instances"); their transfers still overlap. Every rank passes
    the turn on exactly once, also when it never connected."""

    def __init__(self, comm, par):
        self.comm, self.have, self.passed = comm, par.rank == 0, False

    def take(self):
        if not self.have:
            self.comm.wait_for_turn()
            self.have = True

    def pass_on(self):
        self.take()
        if not self.passed:
            self.comm.pass_turn()
            self.passed = True

    def hook(self, event):  # netloader.load's connect_hook
        self.take() if event == "before" else self.pass_on()


def load_weights(args, loader, plan, weights, par, turn, report):
    """Fills this rank's `weights` through netloader, else from disk; returns its server (or
    None)."""
    secret = loader["secret_file"] if loader and loader["auth"] else None
    who = f"netloader_llama rank {par.rank}"
    server, fallback = None, None
    selected = []
    if loader is not None:
        # This rank's server and load options and whether it relays, as netloader-llama derives
        # them (the library's OptionsForRank); the secret is this engine's.
        try:
            options = netloader.options_for_rank(args.model_loader_extra_config, par.world,
                                                 par.rank, par.partition())
        except netloader.Error as e:  # parsed at start-up; only a CONFIG_FILE changed since
            raise EngineError(str(e), 2) from e
        # TENSORS: the tensors of this rank a partial load fills; the others come from disk.
        selected = [n for n in weights
                    if any(netloader.tensor_pattern_matches(p, n) for p in loader["tensors"])]
        if options["metrics_listen"]:
            try:
                at = netloader.serve_metrics(options["metrics_listen"])
            except netloader.Error as e:
                raise EngineError(f"METRICS_PORT: {e}", 2) from e
            print(f"{who}: metrics at http://{at}/metrics", file=sys.stderr)
        if not options["load"]["sources"] and not options["load"]["registry"]:
            fallback = f"no SOURCE for rank {par.rank}"
            netloader.count_fallback("no_source")
        elif loader["tensors"] and not selected:
            fallback = f"TENSORS matches none of rank {par.rank}'s tensors"
            netloader.count_fallback("no_tensors")
        else:
            filled = False
            if loader["delta_from"]:
                try:
                    read_shards(plan_shards(loader["delta_from"], args.config, par), weights)
                    filled = True
                except EngineError as e:
                    print(f"{who}: WARN DELTA_FROM not used ({e}); loading every chunk",
                          file=sys.stderr)
            if options["relay"]:
                server = netloader.Server(weights, relay=True, secret=secret,
                                          **options["server"])
                report["relayed"] = True
                print(f"{who}: relaying at {server.endpoint} while it loads", file=sys.stderr)
            try:
                # Named exactly: the source may hold more tensors matching TENSORS than this rank
                # (another pipeline split, a whole model); this rank needs these.
                stats = netloader.load(
                    weights, secret=secret,
                    select=[netloader.exact_tensor_pattern(n) for n in selected] or None,
                    destination_filled=filled, relay=server, connect_hook=turn.hook,
                    **options["load"])
                report.update(loaded_from=stats["source"], gbps=stats["gbps"],
                              bytes_pulled=sum(a["bytes"] for a in stats["attempts"]),
                              bytes_reused=stats["bytes_reused"], tensors_loaded=stats["tensors"])
            except netloader.Error as e:
                fallback = f"{type(e).__name__}: {e}"
                netloader.count_fallback(type(e).__name__)
    turn.pass_on()  # the next rank must not wait for this one's disk
    if "loaded_from" not in report:
        if fallback:
            report["fallback_reason"] = fallback
            print(f"{who}: WARN netloader did not load this rank ({fallback}); loading from "
                  "disk", file=sys.stderr)
        read_shards(plan, weights)
        report.update(loaded_from="disk", tensors_from_disk=len(weights))
        if server is not None:
            server.mark_loaded()  # the relay's own load failed; it serves what disk gave
    elif selected:
        read_shards(plan, weights, skip=set(selected))  # what the partial load left out
        report["tensors_from_disk"] = len(weights) - len(selected)
    if loader is not None and loader["serve"] and server is None:
        server = netloader.Server(weights, secret=secret, **options["server"])
    return server


def start_comm(par, loader):
    """This rank's collectives. Under mpirun (N = tp x pp ranks) MPI is initialised here through
    mpi4py, after netloader has set what its data plane needs; a single process leaves MPI to
    netloader."""
    if "OMPI_COMM_WORLD_SIZE" not in os.environ:
        if par.world != 1:
            raise EngineError(f"{par.world} ranks need mpirun -np {par.world}", 2)
        return par, LocalComm()
    if loader is not None and not loader["rendezvous"]:
        raise EngineError("under mpirun, --model-loader-extra-config needs RENDEZVOUS (the "
                          "file:PATH given to mpirun --ompi-server)", 2)
    netloader.prepare_mpi_environment(loader and loader["rendezvous"],
                                      loader and loader["interface"])
    import mpi4py

    mpi4py.rc.thread_level = "multiple"  # netloader's threads call MPI too
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    threads_ok = MPI.Query_thread() >= MPI.THREAD_MULTIPLE
    if world.Get_size() != par.world or not threads_ok:
        if world.Get_rank() == 0:
            print(f"netloader_llama: mpirun started {world.Get_size()} ranks, but tensor x "
                  f"pipeline parallel size is {par.world}"
                  + ("" if threads_ok else " (and MPI lacks THREAD_MULTIPLE)"), file=sys.stderr)
        sys.exit(2)
    par = Parallel(par.tp_size, par.pp_size, world.Get_rank())
    return par, MpiComm(MPI, par)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="The example Llama engine in PyTorch: loads a netloader-make-llama "
                    "checkpoint from disk or from a running instance through netloader, decodes "
                    "a prompt greedily on CPU and prints one JSON line per rank. Tensor/pipeline "
                    "parallel: run N = tp x pp ranks under mpirun (README, \"The PyTorch "
                    "engine\").",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--model-loader-extra-config keys (JSON object):\n"
               + netloader.loader_config_help())
    parser.add_argument("--model", required=True,
                        help="checkpoint directory: config.json and *.safetensors")
    parser.add_argument("--prompt", default="Hello, netloader", help="text to continue (bytes)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens to generate")
    parser.add_argument("--load-format", choices=("auto", "safetensors", "netloader"),
                        default="auto",
                        help="safetensors: from disk. netloader: each rank from its SOURCE in "
                             "--model-loader-extra-config, falling back to disk, then serve. "
                             "auto: netloader if --model-loader-extra-config is given")
    parser.add_argument("--model-loader-extra-config", default="",
                        help="JSON object for --load-format=netloader (keys below)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1,
                        help="tensor-parallel ranks (default 1)")
    parser.add_argument("--pipeline-parallel-size", type=int, default=1,
                        help="pipeline stages (default 1)")
    parser.add_argument("--keep-running", action="store_true",
                        help="after decoding, keep serving until SIGINT/SIGTERM")
    parser.add_argument("--log-level", default="info",
                        choices=("trace", "debug", "info", "warn", "error", "off"),
                        help="netloader's log lines shown on stderr")
    args = parser.parse_args(argv)
    if args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")
    if not args.prompt:
        parser.error("--prompt is empty")
    for flag, value in (("--tensor-parallel-size", args.tensor_parallel_size),
                        ("--pipeline-parallel-size", args.pipeline_parallel_size)):
        if not 1 <= value <= 1024:
            parser.error(f"{flag} must be in [1, 1024]")
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s [%(name)s] [%(levelname)s] %(message)s")
    netloader.set_log_level(args.log_level)
    torch.set_num_threads(1)  # the same arithmetic, in the same order, in every run
    load_format = args.load_format
    if load_format == "auto":
        load_format = "netloader" if args.model_loader_extra_config else "safetensors"
    par = Parallel(args.tensor_parallel_size, args.pipeline_parallel_size)

    loader = None
    if load_format == "netloader":
        try:
            loader = netloader.parse_loader_config(args.model_loader_extra_config or "{}",
                                                   par.world)
        except netloader.Error as e:
            raise EngineError(str(e), 2) from e
    par, comm = start_comm(par, loader)
    try:
        return run(args, loader, par, comm)
    except EngineError as e:
        print(f"netloader_llama rank {par.rank}: {e}", file=sys.stderr)
        comm.abort(e.status)  # under mpirun: the whole instance, as netloader-llama does


def run(args, loader, par, comm):
    args.config = read_model_config(args.model)
    plan = plan_shards(args.model, args.config, par)
    # MPI start-up overlaps the allocation when the rendezvous is shared (README, "Performance");
    # ranks under mpirun started it already.
    started = None
    if loader is not None and loader["rendezvous"] and isinstance(comm, LocalComm):
        started = threading.Thread(target=netloader.initialize_transport,
                                   args=(loader["rendezvous"], loader["interface"],
                                         loader["mpi_helpers"]))
        started.start()
    # Huge pages, faulted in: what a load fills fastest.
    weights = netloader.allocate([{"name": s["name"], "dtype": "F32", "shape": s["shape"]}
                                  for s in plan])
    if started is not None:
        started.join()
    report = {"rank": par.rank, "tp_rank": par.tp_rank, "pp_rank": par.pp_rank,
              "engine": "pytorch",
              "bytes": sum(t.numel() * t.element_size() for t in weights.values())}
    load_started = time.time()
    server = load_weights(args, loader, plan, weights, par, Turn(comm, par), report)
    report["load_seconds"] = round(time.time() - load_started, 3)
    if server is not None:
        report["endpoint"] = server.endpoint
        print(f"netloader_llama rank {par.rank}: serving its weights at {server.endpoint}",
              file=sys.stderr)
        if loader["output_prefix"]:
            path = f"{loader['output_prefix']}{par.rank}.txt"
            with open(path + ".tmp", "w") as f:
                f.write(server.endpoint + "\n")
            os.replace(path + ".tmp", path)

    model = Llama(args.config, par, weights, comm)
    tokens, digest = model.generate(list(args.prompt.encode()), args.max_tokens)
    report.update(tokens=tokens, text=detokenize(tokens), logits_digest=digest)
    for line in comm.gather_to_first(report):  # one line each, never interleaved
        print(json.dumps(line), flush=True)

    if args.keep_running and server is not None:
        # Rank 0 decides when to stop (mpirun passes SIGTERM to every rank) and tells the others.
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not comm.from_first(stop.wait(0.1)):
            pass
        server.stop()
        stats = server.stats()
        for line in comm.gather_to_first({"rank": par.rank, "served": stats["clients_served"],
                                          "failed": stats["clients_failed"],
                                          "refused": stats["refused"]}):
            print(json.dumps(line), flush=True)
    elif server is not None:
        server.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EngineError as e:
        print(f"netloader_llama: {e}", file=sys.stderr)
        sys.exit(e.status)
    except KeyboardInterrupt:
        print("netloader_llama: interrupted; nothing was loaded", file=sys.stderr)
        sys.exit(130)
