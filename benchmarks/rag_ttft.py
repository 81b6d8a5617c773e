"""RAG time to first token through real local clusters with a real Redis (CPU, `small` model).

Five clusters (router + one node each; colocated by default, or prefill + decode), side by side
on one machine and one Redis, each node configured for one way of serving RAG prompts:

    full_prefill      no prefix cache, no chunk cache
    prefix_caching    the engine's prefix cache (hits only on an identical leading passage)
    direct_reuse      chunk cache, every cached row reused as is (check layer 0, r = 0)
    blend_r0.15       chunk cache, CacheBlend: recompute 15% of the rows (check layer 1)
    blend_cachecraft  chunk cache, Cache-Craft per-chunk budgets (floor r = 0.15)

Prompts: MuSiQue passages from a small pool, 4 per prompt in varying order, then a question.
The pool is ingested once (IngestDocuments -> Redis); each round sends the same prompt to every
cluster, rotating the order, and TTFT is measured at the client (first streamed chunk). Computed
tokens = prompt tokens - the cached tokens the router reports (prefix hits, or reused rows).
Medians over rounds; the machine is shared, so only same-run ratios are meaningful.

    python benchmarks/rag_ttft.py [--rounds 8] [--passages 4] [--pool 8] [--topology colocated]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import grpc

from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.bench import traces
from splitserve.client import Chunk, Client, Final
from splitserve.modelgen import ensure_model
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.redis_server import start_private_redis

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "rag_ttft_cpu.json"
TRACE = traces.data_file(traces.MUSIQUE_FILE)
TIMEOUT_S = 120
CACHE = ["--no-prefix-caching", "--chunk-planning", "ratio"]
MODES = {
    "full_prefill": ["--no-prefix-caching", "--chunk-cache-bytes", "0"],
    "prefix_caching": ["--chunk-cache-bytes", "0"],
    "direct_reuse": CACHE + ["--blend-check-layers", "0", "--blend-ratio", "0"],
    "blend_r0.15": CACHE + ["--blend-check-layers", "1", "--blend-ratio", "0.15"],
    "blend_cachecraft": ["--no-prefix-caching", "--chunk-planning", "cachecraft", "--blend-ratio", "0.15"],
}


def workload(pool_size: int, passages: int, rounds: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    items = json.loads(TRACE.read_text())
    pool = list(dict.fromkeys(c["text"] for item in items[:3] for c in item["ctxs"]))[:pool_size]
    rng = random.Random(seed)
    prompts = [{"documents": rng.sample(pool, passages), "question": items[i % len(items)]["question"]}
               for i in range(rounds + 1)]
    return pool, prompts


def ttft(url: str, prompt: dict) -> dict:
    start, first = time.perf_counter(), None
    with Client(url, timeout_s=TIMEOUT_S) as client:
        for event in client.generate(prompt=prompt["question"], documents=prompt["documents"], max_tokens=4,
                                     ignore_eos=True):
            if isinstance(event, Chunk) and first is None:
                first = time.perf_counter() - start
            if isinstance(event, Final):
                return {"ttft_s": first, "prompt_tokens": event.prompt_tokens,
                        "computed_tokens": event.prompt_tokens - event.cached_tokens}
    raise RuntimeError("stream ended without a final message")


def _measure(cluster: LocalCluster, prompt: dict) -> dict:
    try:
        return ttft(cluster.url, prompt)
    except Exception:
        for service in cluster.services():
            print(f"--- {service.name} output:\n" + "".join(service.output[-20:]), flush=True)
        raise


def node_address(cluster: LocalCluster) -> str:
    return next(s.address for role, s in cluster.nodes if role in ("prefill", "mixed"))


def ingest(address: str, documents: list[str]) -> None:
    with grpc.insecure_channel(address) as channel:
        node_pb2_grpc.NodeStub(channel).IngestDocuments(node_pb2.IngestRequest(documents=documents), timeout=600)


def chunk_stats(address: str) -> dict:
    with grpc.insecure_channel(address) as channel:
        s = node_pb2_grpc.NodeStub(channel).Stats(node_pb2.StatsRequest(), timeout=10)
    if not s.HasField("chunk_cache"):
        return {}
    c = s.chunk_cache
    return {"local_hits": c.local_hits, "redis_hits": c.redis_hits, "misses": c.misses,
            "recompute_fraction": c.recompute_fraction, "blended_requests": c.blended_requests}


def summarize(rows: list[dict]) -> dict:
    return {"ttft_s_median": statistics.median(r["ttft_s"] for r in rows),
            "computed_tokens_median": statistics.median(r["computed_tokens"] for r in rows),
            "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in rows), "rounds": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--topology", default="colocated", choices=("colocated", "disaggregated"))
    args = parser.parse_args()
    model = ensure_model("small")
    pool, prompts = workload(args.pool, args.passages, args.rounds)
    redis = start_private_redis()
    if redis is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    shape = dict(prefill=0, decode=0, colocated=1) if args.topology == "colocated" else dict(prefill=1, decode=1)
    clusters = {}
    try:
        for mode, flags in MODES.items():
            clusters[mode] = LocalCluster(model, node_args=flags, redis_url=redis.url, **shape)
            clusters[mode].start()
        ingest(node_address(clusters["blend_r0.15"]), pool)
        results = {mode: [] for mode in MODES}
        for i, prompt in enumerate(prompts):
            order = list(MODES)[i % len(MODES):] + list(MODES)[:i % len(MODES)]
            for mode in order:
                row = _measure(clusters[mode], prompt)
                if i > 0:  # round 0 warms every node up (and fetches the pool from Redis)
                    results[mode].append(row)
            line = "  ".join(f"{m}={results[m][-1]['ttft_s']:.2f}s" for m in MODES if i > 0)
            print(f"round {i}: {line}", flush=True)
        stats = {mode: chunk_stats(node_address(c)) for mode, c in clusters.items()}
    finally:
        for c in clusters.values():
            c.stop()
        redis.stop()
    report(args, results, stats)


def report(args, results: dict, stats: dict) -> None:
    summary = {mode: {**summarize(rows), "chunk_cache": stats.get(mode, {})} for mode, rows in results.items()}
    full, prefix, blend = summary["full_prefill"], summary["prefix_caching"], summary["blend_r0.15"]
    checks = {
        "blend_ttft_over_full": blend["ttft_s_median"] / full["ttft_s_median"],
        "blend_ttft_target_max": 1 / 2.5,
        "blend_computed_over_prefix": blend["computed_tokens_median"] / prefix["computed_tokens_median"],
        "blend_computed_target_max": 0.49,
    }
    out = {"model": "small", "dtype": "float32", "device": "cpu", "topology": args.topology, "threads_per_node": 1,
           "passages_per_prompt": args.passages, "passage_pool": args.pool, "max_tokens": 4,
           "note": "5 clusters side by side on one shared 2-core machine; medians over rounds; TTFT at the client",
           "summary": summary, "checks": checks, "rows": results}
    path = RESULTS if args.topology == "colocated" else RESULTS.with_name("rag_ttft_cpu_disaggregated.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    for mode, s in summary.items():
        print(f"{mode:18} TTFT {s['ttft_s_median'] * 1000:8.1f} ms   computed {s['computed_tokens_median']:7.1f} "
              f"of {s['prompt_tokens_median']:.0f} tokens")
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
