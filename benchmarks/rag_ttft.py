"""RAG time to first token and served answer quality through real local clusters and a real Redis.

Clusters side by side on one machine and one redis-server (a database each, so no cluster reuses
what another computed for the same request; router + one mixed node each, or prefill + decode
with `--topology disaggregated`), each node configured for one way of serving RAG:

    full_prefill      no prefix cache, no chunk cache (the reference answer)
    prefix_caching    the engine's prefix cache (hits only on an identical leading passage)
    direct_reuse      chunk cache, every cached row reused as is (check layer 0, r = 0)
    blend_r0.15       chunk cache, CacheBlend: recompute 15% of the rows (the nodes' default check layer, 2)
    blend_cachecraft  chunk cache, Cache-Craft per-chunk budgets (floor r = 0.15)

Requests go over the OpenAI HTTP API, as a user sends them: `/v1/chat/completions` with the
MuSiQue question (and the benchmark's answer cue) as the user message and the question's first
`--passages` passages as `documents`, greedy, up to 32 tokens, streamed. Each question is first
asked once with its passages in the retrieved order on every cluster (warm-up, not measured: the
chunk clusters compute the missed passages after the request's head and store them in their
local tier and Redis), then `--reorders` times with the passages in another order. TTFT is
measured at the client (first streamed token); computed tokens = prompt tokens - cached tokens
(`usage.prompt_tokens_details`). Quality: each answer's ROUGE-L F1 and exact agreement with
full prefill's answer to the same request, and SQuAD F1 against the gold answers. Medians over
requests; the machine is shared, so only same-run ratios are meaningful.

    python benchmarks/rag_ttft.py [--model smollm2-135m-instruct] [--questions 6] [--reorders 2]
        [--passages 4] [--topology colocated|disaggregated] [--modes full_prefill,blend_r0.15,...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path

import grpc
import openai

from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.bench import traces
from splitserve.bench.provenance import portable_args
from splitserve.chunkcache.qa_prompt import QUERY, passage_text
from splitserve.chunkcache.quality import answer_f1, rouge_l_f1
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.redis_server import start_private_redis
from splitserve.modelgen import ensure_model

ROOT = Path(__file__).resolve().parent
TRACE = traces.data_file(traces.MUSIQUE_FILE)
TIMEOUT_S = 300
READY_TIMEOUT_S = 900  # per process: nodes load the model and warm up slowly on a loaded machine
# a node busy with a 2,500-token prefill on a loaded machine answers health checks late: not a dead node
PATIENT_ROUTER = ["--health-timeout-s", "30", "--unhealthy-after", "10"]
MAX_TOKENS = 32
LOCAL_TIER = ["--chunk-cache-bytes", str(3 << 30)]  # every passage's KV stays local after warm-up
CACHE = ["--no-prefix-caching", "--chunk-planning", "ratio"] + LOCAL_TIER
MODES = {
    "full_prefill": ["--no-prefix-caching", "--chunk-cache-bytes", "0"],
    "prefix_caching": ["--chunk-cache-bytes", "0"],
    "direct_reuse": CACHE + ["--blend-check-layers", "0", "--blend-ratio", "0"],
    "blend_r0.15": CACHE + ["--blend-ratio", "0.15"],  # the nodes' default check layer (2)
    "blend_cachecraft": ["--no-prefix-caching", "--chunk-planning", "cachecraft", "--blend-ratio", "0.15"] + LOCAL_TIER,
}
DEFAULT_MODES = "full_prefill,blend_r0.15,blend_cachecraft"


def workload(num_questions: int, passages: int, reorders: int, seed: int = 0) -> list[dict]:
    """Per question: the warm-up order (as retrieved), then `reorders` other orders."""
    rng, out = random.Random(seed), []
    for item in json.loads(TRACE.read_text())[:num_questions]:
        docs = [passage_text(c) for c in item["ctxs"][:passages]]
        orders = []
        while len(orders) < reorders:
            order = rng.sample(docs, len(docs))
            if order != docs and (order not in orders or len(docs) < 3):
                orders.append(order)
        out.append({"question": item["question"], "gold": item["answers"], "warm": docs, "orders": orders})
    return out


def ask(api: openai.OpenAI, question: str, documents: list[str]) -> dict:
    start, first, pieces, usage = time.perf_counter(), None, [], None
    stream = api.chat.completions.create(
        model=api.served_model, messages=[{"role": "user", "content": QUERY.format(question=question)}], max_tokens=MAX_TOKENS,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"documents": documents})
    for chunk in stream:
        if chunk.choices:
            first = first or time.perf_counter() - start
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return {"ttft_s": first, "answer": "".join(pieces).strip(), "prompt_tokens": usage.prompt_tokens,
            "computed_tokens": usage.prompt_tokens - cached}


def leftover_services() -> list[str]:
    """Pids of splitserve nodes and routers already running (e.g. left by a killed run): they take CPU."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"splitserve.cli" in argv and (b"node" in argv or b"router" in argv):
            found.append(pid)
    return found


def node_address(cluster: LocalCluster) -> str:
    return next(s.address for role, s in cluster.nodes if role in ("prefill", "mixed"))


def chunk_stats(address: str, timeout_s: float = 10) -> dict:
    with grpc.insecure_channel(address) as channel:
        s = node_pb2_grpc.NodeStub(channel).Stats(node_pb2.StatsRequest(), timeout=timeout_s)
    if not s.HasField("chunk_cache"):
        return {}
    c = s.chunk_cache
    return {"local_hits": c.local_hits, "redis_hits": c.redis_hits, "misses": c.misses,
            "num_local_chunks": c.num_local_chunks, "recompute_fraction": c.recompute_fraction,
            "blended_requests": c.blended_requests}


def stats_or_error(address: str) -> dict:
    """For the results: a node still busy (recording live variants) may not answer Stats in time."""
    try:
        return chunk_stats(address, timeout_s=60)
    except grpc.RpcError as exc:
        return {"stats_error": exc.code().name}


def wait_for_chunks(cluster: LocalCluster, num_chunks: int, timeout_s: float = 600) -> None:
    """Misses are stored off the request path (engine background work: slow on a loaded machine): wait until
    the node holds them all locally."""
    address, deadline = node_address(cluster), time.monotonic() + timeout_s
    while _local_chunks(address, num_chunks) < num_chunks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{address} did not store {num_chunks} chunks in {timeout_s} s")
        time.sleep(0.2)


def _local_chunks(address: str, default: int) -> int:
    try:
        return chunk_stats(address).get("num_local_chunks", default)
    except grpc.RpcError:  # a node busy computing the misses may answer Stats late: ask again
        return -1


def score(rows: dict[str, list[dict]], golds: list[list[str]]) -> None:
    """Adds each answer's closeness to full prefill's answer to the same request, and F1 vs gold."""
    for mode, mode_rows in rows.items():
        for row, full, gold in zip(mode_rows, rows["full_prefill"], golds):
            row.update(rouge_l=rouge_l_f1(row["answer"], full["answer"]), exact=float(row["answer"] == full["answer"]),
                       f1=answer_f1(row["answer"], gold))


def summarize(rows: list[dict]) -> dict:
    median = lambda key: statistics.median(r[key] for r in rows)
    mean = lambda key: statistics.mean(r[key] for r in rows)
    return {"ttft_s_median": median("ttft_s"), "computed_tokens_median": median("computed_tokens"),
            "prompt_tokens_median": median("prompt_tokens"), "rouge_l_vs_full_mean": mean("rouge_l"),
            "exact_vs_full_mean": mean("exact"), "f1_vs_gold_mean": mean("f1"), "requests": len(rows)}


def run(clusters: dict[str, LocalCluster], questions: list[dict], done) -> None:
    """done(rows, golds) after every question (the results so far are written there)."""
    apis = {m: openai.OpenAI(base_url=c.http_url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
            for m, c in clusters.items()}
    for mode, api in apis.items():
        api.served_model = api.models.list().data[0].id
    rows, golds, seen = {mode: [] for mode in clusters}, [], set()
    for q, item in enumerate(questions):
        seen.update(item["warm"])
        for mode, cluster in clusters.items():
            ask(apis[mode], item["question"], item["warm"])
            if mode not in ("full_prefill", "prefix_caching"):
                wait_for_chunks(cluster, len(seen))
        print(f"question {q}: warmed up", flush=True)
        for order in item["orders"]:
            modes = list(clusters)
            modes = modes[len(golds) % len(modes):] + modes[:len(golds) % len(modes)]  # rotate who goes first
            for mode in modes:
                rows[mode].append({"question": q, **ask(apis[mode], item["question"], order)})
            golds.append(item["gold"])
            line = "  ".join(f"{m}={rows[m][-1]['ttft_s']:.2f}s" for m in clusters)
            print(f"question {q}: {line}", flush=True)
        score(rows, golds)
        done(rows, golds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="preset name or HF folder")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--reorders", type=int, default=2, help="measured requests per question, each another order")
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--topology", default="colocated", choices=("colocated", "disaggregated"))
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--node-kv-bytes", type=int, default=384 << 20, help="each node's KV pool (--kv-cache-bytes): "
                        "the nodes of every cluster share the machine's memory")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "full_prefill" not in modes:
        raise SystemExit(f"--modes must include full_prefill and name only {', '.join(MODES)}; unknown: {unknown}")
    model = Path(args.model) if Path(args.model).is_dir() else ensure_model(args.model)
    args.load_average_start = os.getloadavg()
    args.leftover_services = leftover_services()
    if args.leftover_services:
        print(f"warning: splitserve services already running (pids {', '.join(args.leftover_services)}): "
              "they compete for the CPU", flush=True)
    questions = workload(args.questions, args.passages, args.reorders)
    redis = start_private_redis()
    if redis is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    shape = dict(prefill=0, decode=0, colocated=1) if args.topology == "colocated" else dict(prefill=1, decode=1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # stop the clusters on the way out
    clusters, start = {}, time.perf_counter()
    try:
        for db, mode in enumerate(modes):
            # a Redis database per cluster: one cluster must not reuse the KV another just computed for the same request
            url = f"{redis.url.rsplit('/', 1)[0]}/{db}"
            # patient KV transfers: a 2,500-token prefill sent layer by layer can take over 30 s on a loaded machine
            node_args = MODES[mode] + ["--kv-cache-bytes", str(args.node_kv_bytes), "--transfer-timeout-s", "300"]
            clusters[mode] = LocalCluster(model, node_args=node_args, redis_url=url, http_port=-1,
                                          router_args=PATIENT_ROUTER, ready_timeout_s=READY_TIMEOUT_S, **shape)
            clusters[mode].start(log=lambda line, mode=mode: print(f"{time.perf_counter() - start:6.0f}s {mode}: {line}",
                                                                   flush=True))
        stats = lambda: {mode: stats_or_error(node_address(c)) for mode, c in clusters.items()}
        run(clusters, questions, lambda rows, golds: report(args, model, rows, stats(), time.perf_counter() - start))
    finally:
        for c in clusters.values():
            c.stop()
        redis.stop()


def report(args, model: Path, rows: dict, stats: dict, wall_s: float) -> None:
    summary = {mode: {**summarize(r), "chunk_cache": stats.get(mode, {})} for mode, r in rows.items()}
    full = summary["full_prefill"]
    checks = {f"{m}_ttft_over_full": s["ttft_s_median"] / full["ttft_s_median"] for m, s in summary.items()}
    checks["ttft_target_max"] = 1 / 3
    checks["rouge_l_target_min"] = 0.8
    out = {"command": {"script": "benchmarks/rag_ttft.py", **portable_args(vars(args))}, "model": model.name,
           "load_average_now": os.getloadavg(), "dtype": "float32", "device": "cpu", "topology": args.topology,
           "threads_per_node": 1,
           "api": "HTTP /v1/chat/completions, documents field, streamed", "passages_per_question": args.passages,
           "questions": len({r["question"] for r in rows["full_prefill"]}), "reorders": args.reorders, "max_tokens": MAX_TOKENS, "wall_s": wall_s,
           "note": "clusters side by side on one shared 2-core machine; medians over requests; TTFT at the client",
           "summary": summary, "checks": checks, "rows": rows}
    name = "rag_ttft_smollm2" if "smollm2" in model.name else f"rag_ttft_{model.name}"
    path = args.out or ROOT / "results" / f"{name}{'_disaggregated' if args.topology == 'disaggregated' else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    for mode, s in summary.items():
        print(f"{mode:18} TTFT {s['ttft_s_median'] * 1000:8.1f} ms   computed {s['computed_tokens_median']:7.1f} "
              f"of {s['prompt_tokens_median']:.0f}   ROUGE-L vs full {s['rouge_l_vs_full_mean']:.3f}   "
              f"exact {s['exact_vs_full_mean']:.2f}   F1 {s['f1_vs_gold_mean']:.3f}")
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
