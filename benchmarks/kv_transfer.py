"""KV transfer on the `small` model: the layer checksums' speed, each backend's bandwidth next
to raw gloo, and TTFT through the disaggregated path (checksum on and off, layer-wise and
one-shot) next to a colocated node and the single-process engine.

    python benchmarks/kv_transfer.py [--tokens 512 2048 8192] [--repeats 5]

Part 0 times zlib crc32, CRC32C (google-crc32c), xxh3-64 (xxhash) and MULSUM_64 (the native
kernels') on one thread over buffers of the sizes of the KV transferred, and one layer's copies
with and without the checksum computed as they copy (a prefill node's read out of its pool, a
decode node's write into it). Part 1 moves one request's KV (the model's layers of [2, n,
kv_heads, head_dim] fp32; small: 8 x [2, n, 4, 64]) from this process to a receiver process with
each backend, timed from the sender's begin() to the receiver's DONE. Before the clock starts
the layers are read out of a KV pool as a prefill node reads them while it computes: into
buffers of about JOIN_BYTES where they lie back to back (so the torch backend sends ~2 MB
messages, wire v5), each hashed as it is copied. Variants (`Variant`): torch with and without
checksums; `torch_sender_hashes` (the read only copies, the sender's thread hashes each layer
inside the transfer, as before the fused read); `torch_apart` (layers in buffers of their own,
one message each, as before v5); `torch_pool*` (the receiver writes each layer into a KV pool as
a decode node does, hashing as it copies; the others drop the layers and the receiver hashes
them apart); grpc. The same bytes with a bare ProcessGroupGloo send/recv (one message per
layer) between two other processes: all interleaved round by round, so each ratio to raw gloo
is the median of ratios measured side by side. Raw gloo is timed twice: hot (both ends just
left a barrier, timed on the receiver: the target's reference) and from idle (the receiver
asleep in its posted recvs until the sender starts, timed like the backends across processes:
`*_vs_raw_idle`). Part 2 starts real clusters at
once (router + 1 colocated node; router + 1 prefill + 1 decode on the torch transport, 1
torch thread per node, checksum on / off, layer-wise / one-shot) and sends each prompt to
each cluster in turn; the client's time to first token, medians. The machine's load average
is recorded before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from splitserve.bench.provenance import model_id, portable_args
from splitserve.engine import Engine, EngineConfig, ModelConfig, SamplingParams
from splitserve.engine import native
from splitserve.kvtransfer import (SendState, TransferConfig, TransferMeta, checksum_seed, gather_checksummed,
                                   joined_layers, make_receiver, make_sender, scatter_checksummed, scatter_layer)
from kv_raw_bench import RawGlooPair
from linear_kernels import median_ms

RESULTS = Path(__file__).parent / "results" / "kv_transfer_cpu.json"


@dataclass(frozen=True)
class Variant:
    backend: str
    checksum: bool
    joined: bool = True  # layers back to back in buffers of about JOIN_BYTES, as a prefill node reads them
    fused: bool = True  # the prefill node's read hashes each layer as it copies it; False: the sender hashes it
    sink: str = "none"  # the receiver's write_layer: "none" drops each layer, "pool" writes it into a KV pool


VARIANTS = {"torch": Variant("torch", True), "torch_nochecksum": Variant("torch", False),
            "torch_sender_hashes": Variant("torch", True, fused=False), "torch_apart": Variant("torch", True, joined=False),
            "torch_pool": Variant("torch", True, sink="pool"), "torch_pool_nochecksum": Variant("torch", False, sink="pool"),
            "grpc": Variant("grpc", True)}


def _hashers() -> dict:
    hashers = {"zlib_crc32": zlib.crc32, "xxh3_64": xxhash.xxh3_64_intdigest}
    if native.kv_ops() is not None:
        hashers["mulsum_64"] = lambda data: native.kv_ops().mulsum(torch.from_numpy(data), 0)
    try:
        import google_crc32c

        hashers["crc32c"] = google_crc32c.value
    except ImportError:  # the test extra installs it
        pass
    return hashers


def hash_rows(sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for nbytes in sizes:
        data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8).numpy()
        row = {"bytes": nbytes}
        for name, fn in _hashers().items():
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                fn(data)
                times.append(time.perf_counter() - start)
            row[f"{name}_gbps"] = nbytes / statistics.median(times[1:]) / 1e9
        rows.append(row)
        print(f"{nbytes / 1e6:6.1f} MB hashes, one thread: " + "  ".join(f"{k[:-5]} {v:.2f} GB/s"
                                                                       for k, v in row.items() if k != "bytes"))
    return rows


class KVPool:
    """A node's KV pool in small for transfers of one length: per layer flat K and V with room for
    `num_tokens` rows at slots in whole blocks of 16, the blocks in random order (as a node's pool
    hands them out), filled with random values."""

    def __init__(self, meta: TransferMeta) -> None:
        blocks = -(-meta.num_tokens // 16) + 4
        order = torch.randperm(blocks, generator=torch.Generator().manual_seed(meta.num_tokens))
        self.slots = (order[:, None] * 16 + torch.arange(16)).flatten()[:meta.num_tokens].contiguous()
        shape = (blocks * 16, meta.num_kv_heads, meta.head_dim)
        self.k = [torch.randn(shape) for _ in range(meta.num_layers)]
        self.v = [torch.randn(shape) for _ in range(meta.num_layers)]

    def read(self, meta: TransferMeta, layers: list[torch.Tensor], hashed: bool) -> list[int | None]:
        """A prefill node's reads of every layer into `layers`: with the checksum computed as each is
        copied where `hashed` (and the native kernels are there), else a plain index_select."""
        sums = []
        for layer, out in enumerate(layers):
            value = None
            if hashed:
                value = gather_checksummed(self.k[layer], self.v[layer], self.slots, out,
                                           checksum_seed(meta.request_id, layer))
            if value is None:
                torch.index_select(self.k[layer], 0, self.slots, out=out[0])
                torch.index_select(self.v[layer], 0, self.slots, out=out[1])
            sums.append(value)
        return sums

    def write_layer(self, layer: int, kv: torch.Tensor) -> None:
        scatter_layer(kv, self.k[layer], self.v[layer], self.slots)

    def write_hashed(self, layer: int, kv: torch.Tensor, seed: int) -> int | None:
        value = scatter_checksummed(kv, self.k[layer], self.v[layer], self.slots, seed)
        if value is None:
            self.write_layer(layer, kv)
        return value


def _pool_for(pools: dict[tuple, KVPool], meta: TransferMeta) -> KVPool:
    """The pool for transfers of this layout and length (made once)."""
    key = (meta.num_layers, meta.num_tokens, meta.num_kv_heads, meta.head_dim)
    if key not in pools:
        pools[key] = KVPool(meta)
    return pools[key]


def copy_rows(cfg: ModelConfig, token_counts: list[int], repeats: int) -> list[dict]:
    """One layer's copies on one thread, plain and with the checksum computed as they copy: a
    prefill node's read out of its pool (index_select; the same then xxh3; gather_mulsum) and a
    decode node's write into its pool (index_copy_; the native copy, scatter_layer; scatter_mulsum),
    medians in microseconds."""
    rows = []
    for n in token_counts:
        meta = TransferMeta(**{**meta_fields(cfg, n)[0], "num_layers": 1})
        pool, out = KVPool(meta), torch.empty(meta.layer_shape)
        k, v, slots = pool.k[0], pool.v[0], pool.slots

        def read() -> None:
            torch.index_select(k, 0, slots, out=out[0])
            torch.index_select(v, 0, slots, out=out[1])

        def write() -> None:
            k.index_copy_(0, slots, out[0])
            v.index_copy_(0, slots, out[1])

        copies = {"read": read, "read_then_xxh3": lambda: (read(), xxhash.xxh3_64_intdigest(out.numpy().view("u1"))),
                  "write": write}
        if native.kv_ops() is not None:
            copies["read_mulsum"] = lambda: gather_checksummed(k, v, slots, out, 1)
            copies["write_native"] = lambda: scatter_layer(out, k, v, slots)
            copies["write_mulsum"] = lambda: scatter_checksummed(out, k, v, slots, 1)
        row = {"tokens": n, "layer_bytes": meta.layer_nbytes}
        row.update({f"{name}_us": median_ms(fn, 10 * repeats) * 1e3 for name, fn in copies.items()})
        print(f"{n:6d} tokens, one layer {meta.layer_nbytes / 1e6:.2f} MB: " + "  ".join(
            f"{name} {row[f'{name}_us']:.0f} us" for name in copies))
        rows.append(row)
    return rows


def _receiver_process(backend: str, conn) -> None:
    torch.set_num_threads(1)
    receiver = make_receiver(backend, TransferConfig(timeout_s=120), host="127.0.0.1", port=0)
    conn.send(receiver.address)
    pools: dict[tuple, KVPool] = {}
    while (message := conn.recv()) is not None:
        fields, sink = message
        meta = TransferMeta(**fields)
        if sink == "pool":
            pool = _pool_for(pools, meta)
            receiver.expect(meta, pool.write_layer, pool.write_hashed)
        else:
            receiver.expect(meta, lambda layer, kv: None)
        conn.send("ready")
        while receiver.poll(meta.request_id).name not in ("DONE", "FAILED"):
            time.sleep(0.002)
        info = receiver.info(meta.request_id)
        conn.send((info.state.name, info.ended_at))  # time.monotonic(): comparable across processes
    receiver.close()


class _BackendPeer:
    """A receiver process for one backend and the sender to it in this process."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.conn, child = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(target=_receiver_process, args=(backend, child), daemon=True)
        self.proc.start()
        self.sender = make_sender(backend, self.conn.recv(), TransferConfig(timeout_s=120))
        self.count = 0
        self.pools: dict[tuple, KVPool] = {}

    def seconds(self, fields: dict, variant: Variant) -> float:
        """Sender's begin() -> the receiver's DONE (every layer written and verified). Before the
        clock starts the layers are read out of a pool as a prefill node reads them while it
        computes (into `joined_layers` buffers, or each into its own buffer as before v5; hashed
        as they are copied, or left to the sender to hash, per `variant`)."""
        self.count += 1
        meta = TransferMeta(**{**fields, "request_id": f"{self.backend}-{self.count}", "checksum": variant.checksum})
        self.conn.send((meta.__dict__, variant.sink))
        self.conn.recv()
        layers = (joined_layers(meta) if variant.joined else
                  [torch.empty(meta.layer_shape) for _ in range(meta.num_layers)])
        sums = _pool_for(self.pools, meta).read(meta, layers, hashed=variant.checksum and variant.fused)
        start = time.monotonic()
        self.sender.begin(meta)
        for layer, kv in enumerate(layers):
            self.sender.send_layer(meta.request_id, layer, kv, checksum=sums[layer])
        self.sender.finish(meta.request_id)
        assert self.sender.wait(meta.request_id, 120) == SendState.DONE, self.sender.info(meta.request_id)
        state, ended_at = self.conn.recv()
        assert state == "DONE", state
        return ended_at - start

    def close(self) -> None:
        self.sender.close()
        self.conn.send(None)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def _bandwidth_row(n: int, total: int, samples: dict[str, list[float]]) -> dict:
    raw, idle = samples["raw"], samples["raw_idle"]
    row = {"tokens": n, "bytes": total, "raw_gloo_gbps": total / statistics.median(raw) / 1e9,
           "raw_gloo_idle_gbps": total / statistics.median(idle) / 1e9}
    for name in VARIANTS:
        row[f"{name}_gbps"] = total / statistics.median(samples[name]) / 1e9
        row[f"{name}_vs_raw"] = statistics.median(r / s for r, s in zip(raw, samples[name], strict=True))
        row[f"{name}_vs_raw_idle"] = statistics.median(r / s for r, s in zip(idle, samples[name], strict=True))
    print(f"{n:6d} tokens {total / 1e6:6.1f} MB  raw gloo {row['raw_gloo_gbps']:.2f} GB/s "
          f"(from idle {row['raw_gloo_idle_gbps']:.2f})  " + "  ".join(
              f"{name} {row[f'{name}_gbps']:.2f} ({row[f'{name}_vs_raw']:.0%}; {row[f'{name}_vs_raw_idle']:.0%})"
              for name in VARIANTS))
    return row


def meta_fields(cfg: ModelConfig, num_tokens: int) -> tuple[dict, int]:
    """The TransferMeta fields of one request's fp32 KV of `num_tokens` (request_id set per transfer), and its bytes."""
    fields = dict(request_id="x", num_layers=cfg.num_layers, num_tokens=num_tokens, num_kv_heads=cfg.num_kv_heads,
                  head_dim=cfg.head_dim, dtype="float32")
    return fields, TransferMeta(**fields).total_nbytes


def bandwidth_rows(cfg: ModelConfig, token_counts: list[int], repeats: int) -> list[dict]:
    peers = {backend: _BackendPeer(backend) for backend in ("torch", "grpc")}
    rows = []
    try:
        with RawGlooPair() as raw:
            for n in token_counts:
                fields, total = meta_fields(cfg, n)
                samples = {name: [] for name in ["raw", "raw_idle", *VARIANTS]}
                for i in range(repeats + 1):  # round 0 warms up (pair groups, buffers): not counted
                    measured = {"raw": raw.move(total, total // cfg.num_layers),
                                "raw_idle": raw.move_from_idle(total, total // cfg.num_layers)}
                    for name, variant in VARIANTS.items():
                        measured[name] = peers[variant.backend].seconds(fields, variant)
                    for name, seconds in measured.items():
                        samples[name] += [seconds] if i else []
                rows.append(_bandwidth_row(n, total, samples))
    finally:
        for peer in peers.values():
            peer.close()
    return rows


async def _ttft(url: str, prompt: list[int]) -> float:
    from splitserve.client import AsyncClient

    async with AsyncClient(url, timeout_s=600) as client:
        start = time.perf_counter()
        async for event in client.generate(prompt_token_ids=prompt, max_tokens=2, ignore_eos=True):
            return time.perf_counter() - start
    raise RuntimeError("no token")


def _checksum_off_args() -> list[str]:
    """`--no-kv-checksum` where the nodes have it (checksums on by default); before that, off was the default."""
    help_text = subprocess.run([str(Path(sys.executable).with_name("splitserve")), "node", "--help"],
                               capture_output=True, text=True, check=True).stdout
    return ["--no-kv-checksum"] if "--no-kv-checksum" in help_text else []


CLUSTERS = {  # name -> (LocalCluster kwargs, extra node args)
    "colocated": (dict(prefill=0, decode=0, colocated=1), []),
    "disagg_layerwise": (dict(transport="torch"), ["--one-shot-max-tokens=0", "--kv-checksum"]),
    "disagg_layerwise_nochecksum": (dict(transport="torch"), ["--one-shot-max-tokens=0", "OFF"]),
    "disagg_oneshot": (dict(transport="torch"), ["--one-shot-max-tokens=1000000", "--kv-checksum"]),
}


# a node starved of CPU by other jobs misses health checks while it prefills: not a hang to fail over from
PATIENT_ROUTER = ["--health-timeout-s=30", "--unhealthy-after=20"]


def _started(make, attempts: int = 3):
    """A started LocalCluster; on a loaded machine a service may miss its ready timeout: try again."""
    for attempt in range(attempts):
        cluster = make()
        try:
            cluster.start()
            return cluster
        except RuntimeError as exc:
            print(f"cluster start failed ({str(exc).splitlines()[0]}), attempt {attempt + 1} of {attempts}")
    raise RuntimeError(f"no cluster after {attempts} attempts")


def cluster_ttfts(model: Path, prompts: dict[int, list[list[int]]]) -> dict[str, dict[int, list[float]]]:
    """Every cluster up at once; each prompt goes to each cluster in turn. name -> tokens -> TTFTs."""
    from contextlib import ExitStack

    from splitserve.localcluster.cluster import LocalCluster

    common, off = ["--max-batched-tokens=2048", "--transfer-timeout-s=300"], _checksum_off_args()
    with ExitStack() as stack:
        urls = {}
        for name, (kwargs, extra) in CLUSTERS.items():
            args = common + [a for x in extra for a in (off if x == "OFF" else [x])]
            cluster = _started(lambda: LocalCluster(model, threads=1, node_args=args, router_args=PATIENT_ROUTER,
                                                    **kwargs))
            stack.callback(cluster.stop)
            urls[name] = cluster.url
            asyncio.run(_ttft(urls[name], prompts[min(prompts)][0]))  # warm-up (forms the pair group)
        ttfts = {name: {n: [] for n in prompts} for name in urls}
        for n, ps in prompts.items():
            for p in ps:
                for name, url in urls.items():
                    ttfts[name][n].append(asyncio.run(_ttft(url, p)))
    return ttfts


def engine_ttfts(model: Path, prompts: dict[int, list[list[int]]]) -> dict[int, float]:
    torch.set_num_threads(1)
    engine = Engine(model, EngineConfig(max_num_batched_tokens=2048, enable_prefix_caching=False))
    engine.generate([prompts[min(prompts)][0]], SamplingParams(max_tokens=1))
    ttft = {}
    for n, ps in prompts.items():
        times = []
        for p in ps:
            start = time.perf_counter()
            next(engine.stream(p, SamplingParams(max_tokens=2, ignore_eos=True)))
            times.append(time.perf_counter() - start)
            engine.abort(next(iter(engine.requests), ""))
            while engine.has_unfinished():
                engine.step()
        ttft[n] = statistics.median(times)
    return ttft


def _paired_excess(slow: list[float], base: list[float]) -> float:
    """Median over prompts of (slow - base) / base, each pair measured back to back."""
    return statistics.median((a - b) / b for a, b in zip(slow, base, strict=True))


def ttft_rows(model: Path, token_counts: list[int], repeats: int) -> list[dict]:
    rng = random.Random(0)
    prompts = {n: [[rng.randrange(5, 8000) for _ in range(n)] for _ in range(repeats)] for n in token_counts}
    engine = engine_ttfts(model, prompts)
    clusters = cluster_ttfts(model, prompts)
    rows = []
    for n in token_counts:
        row = {"tokens": n, "ttft_engine_s": engine[n],
               **{f"ttft_{k}_s": statistics.median(v[n]) for k, v in clusters.items()}}
        for mode in ("layerwise", "oneshot"):
            row[f"transfer_overhead_{mode}"] = _paired_excess(clusters[f"disagg_{mode}"][n], clusters["colocated"][n])
        row["checksum_overhead_layerwise"] = _paired_excess(clusters["disagg_layerwise"][n],
                                                            clusters["disagg_layerwise_nochecksum"][n])
        rows.append(row)
        print(f"{n:6d} tokens TTFT  engine {row['ttft_engine_s']:.3f}s  colocated {row['ttft_colocated_s']:.3f}s  "
              f"layer-wise {row['ttft_disagg_layerwise_s']:.3f}s ({row['transfer_overhead_layerwise']:+.1%}; "
              f"checksum {row['checksum_overhead_layerwise']:+.1%} over "
              f"{row['ttft_disagg_layerwise_nochecksum_s']:.3f}s)  "
              f"one-shot {row['ttft_disagg_oneshot_s']:.3f}s ({row['transfer_overhead_oneshot']:+.1%})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--ttft-repeats", type=int, default=3, help="prompts per length in part 2")
    parser.add_argument("--ttft-tokens", type=int, nargs="+", default=None, help="prompt lengths in part 2 (--tokens)")
    parser.add_argument("--skip-ttft", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.model is None:
        from splitserve.modelgen.cache import ensure_model

        args.model = ensure_model("small")
    cfg = ModelConfig.from_dir(args.model)
    report = {"benchmark": "kv_transfer", "model": model_id(args.model), "dtype": "float32",
              "config": portable_args({k: str(v) for k, v in vars(args).items()}),
              "method": __doc__.split("\n\n", 2)[2].strip(),
              "load_average_before": os.getloadavg()}
    kv_sizes = sorted({TransferMeta("x", cfg.num_layers, n, cfg.num_kv_heads, cfg.head_dim, "float32").total_nbytes
                       for n in args.tokens})
    report["hashes"] = hash_rows(kv_sizes, args.repeats)
    report["layer_copies"] = copy_rows(cfg, args.tokens, args.repeats)
    report["bandwidth"] = bandwidth_rows(cfg, args.tokens, args.repeats)
    report["load_average_after_bandwidth"] = os.getloadavg()
    _write(args.out, report)
    if not args.skip_ttft:
        report["ttft"] = ttft_rows(args.model, args.ttft_tokens or args.tokens, args.ttft_repeats)
        report["load_average_after"] = os.getloadavg()
        _write(args.out, report)
    print(f"load average before {report['load_average_before']}, after {os.getloadavg()}")


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
