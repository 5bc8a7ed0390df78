#!/usr/bin/python3
"""netloader_llama.py: the example engine in PyTorch, with a vLLM-style --load-format=netloader.

The same Llama architecture as the C++ netloader-llama (token embedding, RMSNorm, grouped-query
attention with rotary embedding and a KV cache, SwiGLU MLP, LM head; float32 on CPU), on the
checkpoints netloader-make-llama writes, decoding a prompt greedily. One process (tensor and
pipeline parallel size 1), so it exchanges weights with single-process netloader-llama instances
and with other instances of itself.

  --load-format safetensors   read the checkpoint from disk;
  --load-format netloader     fill the weights from the SOURCE of --model-loader-extra-config
                              (the same keys and strict rules as netloader-llama: one parser),
                              falling back to disk for any reason, then serve them;
  --load-format auto          netloader if --model-loader-extra-config is given.

Prints one JSON line: where the weights came from (loaded_from, fallback_reason), the generated
tokens and text, and logits_digest (SHA-256 of every logit computed: two runs agree only if every
weight they used was bit-identical). Run with Debian's /usr/bin/python3 and PYTHONPATH at the
netloader package (build/python, or the installed dist-packages).
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
# exchange weights only when they shard the same way; here always tensor/pipeline size 1.
LAYOUT_KEY = "netloader-llama/vllm-tp-split-v1"
PARTITION = {"tp_size": 1, "tp_rank": 0, "pp_size": 1, "pp_rank": 0, "layout_key": LAYOUT_KEY}


class EngineError(Exception):
    """A problem with the command line or the checkpoint: printed, exit status 2 or 3."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


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


def expected_shapes(c):
    d, v, i, hd = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": [v, d], "model.norm.weight": [d], "lm_head.weight": [v, d]}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out.update({p + "input_layernorm.weight": [d], p + "self_attn.q_proj.weight": [q, d],
                    p + "self_attn.k_proj.weight": [kv, d], p + "self_attn.v_proj.weight": [kv, d],
                    p + "self_attn.o_proj.weight": [d, q],
                    p + "post_attention_layernorm.weight": [d],
                    p + "mlp.gate_proj.weight": [i, d], p + "mlp.up_proj.weight": [i, d],
                    p + "mlp.down_proj.weight": [d, i]})
    return out


def check_layout(model_dir, config):
    """The checkpoint holds exactly the tensors the config needs, float32; names what is not."""
    expected = expected_shapes(config)
    for t in netloader.read_layout(model_dir):
        want = expected.pop(t["name"], None)
        if want is None:
            raise EngineError(f"{t['file']}: unexpected tensor '{t['name']}' for this config", 3)
        if t["dtype"] != "F32" or list(t["shape"]) != want:
            raise EngineError(f"tensor '{t['name']}' is {t['dtype']} {t['shape']}; the config "
                              f"needs F32 {want}", 3)
    if expected:
        raise EngineError(f"checkpoint lacks tensor '{sorted(expected)[0]}' (and "
                          f"{len(expected) - 1} more) that the config needs", 3)


class Llama:
    """Greedy decoding over the weights as loaded (a state_dict of the checkpoint's names)."""

    def __init__(self, config, weights):
        self.c, self.w = config, weights
        hd = config["head_dim"]
        self.inv_freq = config["rope_theta"] ** (-2.0 * torch.arange(hd // 2, dtype=torch.float32)
                                                 / hd)

    def _norm(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean() + self.c["rms_norm_eps"]) * weight

    def _rope(self, heads, position):  # Hugging Face "rotate half", heads: [n, head_dim]
        angle = position * self.inv_freq
        cos, sin = torch.cos(angle), torch.sin(angle)
        a, b = heads.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    def _layer(self, layer, x, position, cache):
        c, w, p = self.c, self.w, f"model.layers.{layer}."
        hd, heads, kv_heads = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
        h = self._norm(x, w[p + "input_layernorm.weight"])
        q = self._rope((w[p + "self_attn.q_proj.weight"] @ h).view(heads, hd), position)
        k = self._rope((w[p + "self_attn.k_proj.weight"] @ h).view(kv_heads, hd), position)
        v = (w[p + "self_attn.v_proj.weight"] @ h).view(kv_heads, hd)
        cache[layer][0].append(k)
        cache[layer][1].append(v)
        keys = torch.stack(cache[layer][0], dim=1)  # [kv_heads, positions, hd]
        values = torch.stack(cache[layer][1], dim=1)
        group = heads // kv_heads
        keys = keys.repeat_interleave(group, dim=0)
        values = values.repeat_interleave(group, dim=0)
        scores = torch.softmax((keys @ q.unsqueeze(-1)).squeeze(-1) / hd ** 0.5, dim=-1)
        attn = (scores.unsqueeze(1) @ values).reshape(heads * hd)
        x = x + w[p + "self_attn.o_proj.weight"] @ attn
        h = self._norm(x, w[p + "post_attention_layernorm.weight"])
        gate = w[p + "mlp.gate_proj.weight"] @ h
        up = w[p + "mlp.up_proj.weight"] @ h
        return x + w[p + "mlp.down_proj.weight"] @ (torch.nn.functional.silu(gate) * up)

    def _forward(self, token, position, cache, digest):
        x = self.w["model.embed_tokens.weight"][token]
        for layer in range(self.c["num_hidden_layers"]):
            x = self._layer(layer, x, position, cache)
        logits = self.w["lm_head.weight"] @ self._norm(x, self.w["model.norm.weight"])
        digest.update(logits.numpy().tobytes())
        return int(torch.argmax(logits))  # ties: the lowest index

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens):
        cache = [([], []) for _ in range(self.c["num_hidden_layers"])]
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
        return tokens, digest.hexdigest()[:16]


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


def peer_options(loader, secret):
    """What netloader.load and netloader.Server both take from the extra config."""
    return dict(model_id=loader["model_id"] or None, partition=PARTITION, secret=secret,
                window=loader["window"], connect_timeout=loader["connect_timeout"],
                stall_timeout=loader["stall_timeout"],
                heartbeat_timeout=loader["heartbeat_timeout"],
                rendezvous=loader["rendezvous"] or None, interface=loader["interface"])


def start_server(weights, loader, secret, relay=False):
    port = loader["listen_port"]
    return netloader.Server(weights, f"tcp://{loader['listen_host']}:{port}",
                            max_clients=loader["max_clients"], fanout=loader["fanout"],
                            chunk_bytes=loader["chunk_mib"] << 20, relay=relay,
                            **peer_options(loader, secret))


def load_weights(args, loader, weights, report):
    """Fills `weights` through netloader, else from disk; returns the server (or None)."""
    secret = loader["secret_file"] if loader and loader["auth"] else None
    server, fallback = None, None
    selected = []
    if loader is not None:
        selected = [n for n in weights
                    if any(netloader.tensor_pattern_matches(p, n) for p in loader["tensors"])]
        sources = loader["sources"].get(0)
        if not sources:
            fallback = "no SOURCE for rank 0"
        elif loader["tensors"] and not selected:
            fallback = "TENSORS matches none of rank 0's tensors"
        else:
            filled = False
            if loader["tensors"]:
                # A partial load: what TENSORS leaves out comes from disk first.
                netloader.load_from_disk(args.model, weights)
            elif loader["delta_from"]:
                try:
                    netloader.load_from_disk(loader["delta_from"], weights)
                    filled = True
                except netloader.Error as e:
                    print(f"netloader_llama: WARN DELTA_FROM not used ({e}); loading every chunk",
                          file=sys.stderr)
            if loader["serve"] and not loader["tensors"] and loader["rendezvous"]:
                server = start_server(weights, loader, secret, relay=True)
                report["relayed"] = True
                print(f"netloader_llama: relaying at {server.endpoint} while it loads",
                      file=sys.stderr)
            try:
                stats = netloader.load(
                    weights, sources, register_timeout=loader["register_timeout"],
                    busy_timeout=max(60.0, loader["register_timeout"]), stripe=loader["stripe"],
                    select=loader["tensors"] or None, destination_filled=filled, relay=server,
                    **peer_options(loader, secret))
                report.update(loaded_from=stats["source"], gbps=stats["gbps"],
                              bytes_pulled=sum(a["bytes"] for a in stats["attempts"]),
                              bytes_reused=stats["bytes_reused"], tensors_loaded=stats["tensors"])
            except netloader.Error as e:
                fallback = f"{type(e).__name__}: {e}"
    if "loaded_from" not in report:
        if fallback:
            report["fallback_reason"] = fallback
            print(f"netloader_llama: WARN netloader did not load the weights ({fallback}); "
                  "loading from disk", file=sys.stderr)
        netloader.load_from_disk(args.model, weights)
        report.update(loaded_from="disk", tensors_from_disk=len(weights))
        if server is not None:
            server.mark_loaded()  # the relay's own load failed; it serves what disk gave
    elif selected:
        report["tensors_from_disk"] = len(weights) - len(selected)
    if loader is not None and loader["serve"] and server is None:
        server = start_server(weights, loader, secret)
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="The example Llama engine in PyTorch: loads a netloader-make-llama "
                    "checkpoint from disk or from a running instance through netloader, decodes "
                    "a prompt greedily on CPU and prints one JSON line.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--model-loader-extra-config keys (JSON object):\n"
               + netloader.loader_config_help())
    parser.add_argument("--model", required=True,
                        help="checkpoint directory: config.json and *.safetensors")
    parser.add_argument("--prompt", default="Hello, netloader", help="text to continue (bytes)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens to generate")
    parser.add_argument("--load-format", choices=("auto", "safetensors", "netloader"),
                        default="auto",
                        help="safetensors: from disk. netloader: from the SOURCE of "
                             "--model-loader-extra-config, falling back to disk, then serve. "
                             "auto: netloader if --model-loader-extra-config is given")
    parser.add_argument("--model-loader-extra-config", default="",
                        help="JSON object for --load-format=netloader (keys below)")
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
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s [%(name)s] [%(levelname)s] %(message)s")
    netloader.set_log_level(args.log_level)
    torch.set_num_threads(1)  # the same arithmetic, in the same order, in every run
    load_format = args.load_format
    if load_format == "auto":
        load_format = "netloader" if args.model_loader_extra_config else "safetensors"

    loader = None
    if load_format == "netloader":
        try:
            loader = netloader.parse_loader_config(args.model_loader_extra_config or "{}", 1)
        except netloader.Error as e:
            raise EngineError(str(e), 2) from e
    config = read_model_config(args.model)
    try:
        check_layout(args.model, config)
    except netloader.Error as e:
        raise EngineError(str(e), 3) from e
    # MPI start-up overlaps the allocation when the rendezvous is shared (README, "Performance").
    started = None
    if loader is not None and loader["rendezvous"]:
        started = threading.Thread(target=netloader.initialize_transport,
                                   args=(loader["rendezvous"], loader["interface"]))
        started.start()
    weights = netloader.allocate(args.model)  # huge pages: what a load fills fastest
    if started is not None:
        started.join()
    report = {"rank": 0, "engine": "pytorch",
              "bytes": sum(t.numel() * t.element_size() for t in weights.values())}
    load_started = time.time()
    server = load_weights(args, loader, weights, report)
    report["load_seconds"] = round(time.time() - load_started, 3)
    if server is not None:
        report["endpoint"] = server.endpoint
        print(f"netloader_llama: serving its weights at {server.endpoint}", file=sys.stderr)
        if loader["output_prefix"]:
            path = loader["output_prefix"] + "0.txt"
            with open(path + ".tmp", "w") as f:
                f.write(server.endpoint + "\n")
            os.replace(path + ".tmp", path)

    tokens, digest = Llama(config, weights).generate(list(args.prompt.encode()), args.max_tokens)
    report.update(tokens=tokens, text=detokenize(tokens), logits_digest=digest)
    print(json.dumps(report), flush=True)

    if args.keep_running and server is not None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.1):
            pass
        server.stop()
        stats = server.stats()
        print(json.dumps({"rank": 0, "served": stats["clients_served"],
                          "failed": stats["clients_failed"], "refused": stats["refused"]}),
              flush=True)
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
