"""KV transfer on the `small` model: bandwidth of each backend next to raw gloo, and TTFT
through the disaggregated path (layer-wise and one-shot) next to a colocated node and the
single-process engine.

    python benchmarks/kv_transfer.py [--tokens 512 2048 8192] [--repeats 3]

Part 1 moves one request's KV (8 layers of [2, n, 4, 64] fp32) from this process to a
receiver process with each backend, and the same bytes with a bare ProcessGroupGloo
send/recv (one message per layer) in the same run. Part 2 starts real clusters (router + 1
prefill + 1 decode, torch transport, 1 torch thread per node; and router + 1 colocated node)
and measures the client's time to first token. Medians over repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import statistics
import time
from pathlib import Path

import torch

from splitserve.bench.provenance import model_id, portable_args
from splitserve.engine import Engine, EngineConfig, ModelConfig, SamplingParams
from splitserve.kvtransfer import SendState, TransferConfig, TransferMeta, make_receiver, make_sender
from kv_raw_bench import measure_gloo_bandwidth

RESULTS = Path(__file__).parent / "results" / "kv_transfer_cpu.json"


def _receiver_process(backend: str, conn) -> None:
    torch.set_num_threads(1)
    receiver = make_receiver(backend, TransferConfig(timeout_s=120), host="127.0.0.1", port=0)
    conn.send(receiver.address)
    while (message := conn.recv()) is not None:
        meta = TransferMeta(**message)
        stamp = []

        def write_layer(layer: int, kv, last=meta.num_layers - 1) -> None:
            if layer == last:
                stamp.append(time.perf_counter())  # CLOCK_MONOTONIC: comparable across processes

        receiver.expect(meta, write_layer)
        conn.send("ready")
        while receiver.poll(meta.request_id).name not in ("DONE", "FAILED"):
            time.sleep(0.002)
        conn.send((receiver.poll(meta.request_id).name, stamp[0] if stamp else None))
    receiver.close()


def backend_seconds(backend: str, meta_kwargs: dict, repeats: int) -> list[float]:
    """Sender's begin() -> the receiver holding the last layer, per transfer."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver_process, args=(backend, child))
    proc.start()
    try:
        sender = make_sender(backend, parent.recv(), TransferConfig(timeout_s=120))
        times = []
        for i in range(repeats + 1):
            meta = TransferMeta(**{**meta_kwargs, "request_id": f"{backend}-{i}"})
            parent.send(meta.__dict__)
            parent.recv()
            layers = [torch.randn(meta.layer_shape) for _ in range(meta.num_layers)]
            start = time.perf_counter()
            sender.begin(meta)
            for layer, kv in enumerate(layers):
                sender.send_layer(meta.request_id, layer, kv)
            sender.finish(meta.request_id)
            assert sender.wait(meta.request_id, 120) == SendState.DONE
            state, stamp = parent.recv()
            assert state == "DONE"
            times.append(stamp - start)
        sender.close()
        parent.send(None)
        return times[1:]
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def bandwidth_rows(cfg: ModelConfig, token_counts: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in token_counts:
        meta = dict(request_id="x", num_layers=cfg.num_layers, num_tokens=n, num_kv_heads=cfg.num_kv_heads,
                    head_dim=cfg.head_dim, dtype="float32")
        total = TransferMeta(**meta).total_nbytes
        raw = measure_gloo_bandwidth(total, repeats=repeats, chunk_bytes=total // cfg.num_layers)
        row = {"tokens": n, "bytes": total, "raw_gloo_gbps": raw.gbytes_per_s}
        for backend in ("torch", "grpc"):
            seconds = statistics.median(backend_seconds(backend, meta, repeats))
            row[f"{backend}_gbps"] = total / seconds / 1e9
            row[f"{backend}_vs_raw"] = row[f"{backend}_gbps"] / raw.gbytes_per_s
        rows.append(row)
        print(f"{n:6d} tokens {total / 1e6:8.1f} MB  raw gloo {row['raw_gloo_gbps']:.2f} GB/s  "
              f"torch {row['torch_gbps']:.2f} ({row['torch_vs_raw']:.0%})  grpc {row['grpc_gbps']:.2f} ({row['grpc_vs_raw']:.0%})")
    return rows


async def _ttft(url: str, prompt: list[int]) -> float:
    from splitserve.client import AsyncClient

    async with AsyncClient(url, timeout_s=600) as client:
        start = time.perf_counter()
        async for event in client.generate(prompt_token_ids=prompt, max_tokens=2, ignore_eos=True):
            return time.perf_counter() - start
    raise RuntimeError("no token")


def cluster_ttfts(model: Path, prompts: dict[int, list[list[int]]], **cluster_kwargs) -> dict[int, float]:
    from splitserve.localcluster.cluster import LocalCluster

    with LocalCluster(model, threads=1, **cluster_kwargs) as cluster:
        asyncio.run(_ttft(cluster.url, prompts[min(prompts)][0]))  # warm-up (forms the pair group)
        return {n: statistics.median(asyncio.run(_ttft(cluster.url, p)) for p in ps) for n, ps in prompts.items()}


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


def ttft_rows(model: Path, token_counts: list[int], repeats: int) -> list[dict]:
    rng = random.Random(0)
    prompts = {n: [[rng.randrange(5, 8000) for _ in range(n)] for _ in range(repeats)] for n in token_counts}
    common = dict(node_args=["--max-batched-tokens=2048", "--transfer-timeout-s=300"])
    runs = {
        "engine": engine_ttfts(model, prompts),
        "colocated": cluster_ttfts(model, prompts, prefill=0, decode=0, colocated=1, **common),
        "disagg_layerwise": cluster_ttfts(model, prompts, transport="torch",
                                          node_args=common["node_args"] + ["--one-shot-max-tokens=0"]),
        "disagg_oneshot": cluster_ttfts(model, prompts, transport="torch",
                                        node_args=common["node_args"] + ["--one-shot-max-tokens=1000000"]),
    }
    rows = []
    for n in token_counts:
        row = {"tokens": n, **{f"ttft_{k}_s": v[n] for k, v in runs.items()}}
        for mode in ("layerwise", "oneshot"):
            row[f"transfer_overhead_{mode}"] = (row[f"ttft_disagg_{mode}_s"] - row["ttft_colocated_s"]) / row[f"ttft_disagg_{mode}_s"]
        rows.append(row)
        print(f"{n:6d} tokens TTFT  engine {row['ttft_engine_s']:.3f}s  colocated {row['ttft_colocated_s']:.3f}s  "
              f"disagg layer-wise {row['ttft_disagg_layerwise_s']:.3f}s ({row['transfer_overhead_layerwise']:+.1%})  "
              f"one-shot {row['ttft_disagg_oneshot_s']:.3f}s ({row['transfer_overhead_oneshot']:+.1%})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
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
              "bandwidth": bandwidth_rows(cfg, args.tokens, args.repeats)}
    if not args.skip_ttft:
        report["ttft"] = ttft_rows(args.model, args.tokens, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
