"""TTFT of a blended prefill with Redis as the only chunk tier: whole values vs layer by layer.

One engine (`small`, fp32, `--threads`), a private redis-server on loopback, no local tier.
Passages from the MuSiQue trace are stored once (each computed after the prompt head); each
round asks a prompt of `--passages` of them in a new order + a question, once per mode, the
modes' order alternating between rounds (ABBA):

    whole       plan() reads every chosen value whole (one pipelined round trip) and decodes it,
                then the blended prefill runs (the behaviour before this change)
    layerwise   plan() reads the headers; a thread reads layer l + 1 of every value (GETRANGE)
                while the engine computes layer l; the checksum is verified after the last layer

TTFT here = plan (Redis reads) + blended prefill + sampling the first token, in-process (no
gRPC): what the loading change can save. The two modes' logits must be equal (checked every
round). Also timed: the whole read alone, and a full prefill. Medians over rounds.

    flock -x /tmp/splitserve-timing.lock python benchmarks/chunkcache_layerwise.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from chunkcache_common import load_engine
from splitserve.bench import traces
from splitserve.bench.provenance import portable_args
from splitserve.chunkcache.documents import document_prompt
from splitserve.chunkcache.keys import content_hash, model_fingerprint
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, SamplingParams
from splitserve.localcluster.redis_server import start_private_redis

ROOT = Path(__file__).resolve().parent
PARAMS = SamplingParams(max_tokens=1)


def timed_blend(engine: Engine, cache: ChunkCache, ids, spans) -> dict:
    start = time.perf_counter()
    plan = cache.plan(ids, spans)
    planned = time.perf_counter()
    outcome = cache.blend(engine, "r", ids, plan, PARAMS, 0)
    done = time.perf_counter()
    engine.cancel_reservation("r")
    return {"ttft_s": done - start, "plan_s": planned - start, "blend_s": done - planned,
            "computed_rows": outcome.computed_rows, "logits": outcome.logits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--passages", type=int, default=4)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "chunkcache_layerwise.json"))
    args = p.parse_args()
    model, engine = load_engine(args.model, args.threads)
    cfg = engine.model_config
    redis_server = start_private_redis()
    if redis_server is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    try:
        tier = RedisTier(redis_server.url, model_fingerprint(model), engine.config.dtype, timeout_s=10.0,
                         layout=(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim))
        result = measure(args, engine, tier)
    finally:
        redis_server.stop()
    result.update(model=args.model, threads=args.threads, args=portable_args(vars(args)), loadavg_before=result.pop("load0"),
                  loadavg_after=os.getloadavg())
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


def measure(args, engine: Engine, tier: RedisTier) -> dict:
    items = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())
    pool = list(dict.fromkeys(c["text"] for item in items[:3] for c in item["ctxs"]))[:args.pool]
    caches = {mode: ChunkCache(engine, ChunkStore(LocalTier(0), tier),
                               ChunkCacheConfig(live_variants=0, layerwise_load=mode == "layerwise"))
              for mode in ("whole", "layerwise")}
    ids, spans = document_prompt(engine.tokenizer, pool, "")
    head = ids[:spans[0][0]]
    for s, n in spans:
        tier.put(*caches["whole"].compute_alone(engine, ids[s:s + n], head))
    rng, rounds, load0 = random.Random(0), [], os.getloadavg()
    for r in range(args.rounds + 1):  # round 0 warms up
        docs = rng.sample(pool, args.passages)
        ids, spans = document_prompt(engine.tokenizer, docs, items[r % len(items)]["question"])
        order = ["whole", "layerwise"] if r % 2 == 0 else ["layerwise", "whole"]
        out = {mode: timed_blend(engine, caches[mode], ids, spans) for mode in order}
        if not torch.equal(out["whole"].pop("logits"), out["layerwise"].pop("logits")):
            raise SystemExit(f"round {r}: layer-wise loading changed the logits")
        start = time.perf_counter()
        chosen = [m for ms in tier.metas([content_hash(ids[s:s + n]) for s, n in spans]).values() for m in ms]
        tier.fetch([(m.chunk, m.variant_id) for m in chosen])
        out["whole_read_s"] = time.perf_counter() - start
        if r % 3 == 1:
            out["full_prefill_s"] = timed_blend(engine, caches["whole"], ids, [])["ttft_s"]
        out.update(prompt_tokens=len(ids), value_bytes=sum(m.num_bytes for m in chosen))
        if r:
            rounds.append(out)
        print(f"round {r}: whole {out['whole']['ttft_s']:.3f} s, layerwise {out['layerwise']['ttft_s']:.3f} s",
              flush=True)
    med = lambda f: statistics.median(f(x) for x in rounds)
    summary = {mode: {k: med(lambda x, k=k: x[mode][k]) for k in ("ttft_s", "plan_s", "blend_s", "computed_rows")}
               for mode in ("whole", "layerwise")}
    ratio = med(lambda x: x["layerwise"]["ttft_s"] / x["whole"]["ttft_s"])
    return {"median": summary, "median_layerwise_over_whole": ratio, "median_whole_read_s": med(lambda x: x["whole_read_s"]),
            "median_full_prefill_s": statistics.median(x["full_prefill_s"] for x in rounds if "full_prefill_s" in x),
            "median_prompt_tokens": med(lambda x: x["prompt_tokens"]), "load0": load0, "rounds": rounds}


if __name__ == "__main__":
    main()
