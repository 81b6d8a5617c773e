"""The KV cache in float16 / bfloat16 for an fp32 model (`--kv-cache-dtype`) against the fp32 cache, on the real
model: what it buys (tokens per KV byte, bytes a prefill node sends, decode step time where attention reads long
contexts) and what it costs in answers.

Speed: engines with each cache dtype in one process (`--threads`), each shape (batch x context) prefilled once per
engine with random tokens, then `--steps` decode steps timed one by one, the dtypes alternating step by step round
after round (`--repeats`); median step time per (shape, dtype) and its ratio to fp32's.
Quality: chat questions (chat template), the fp32 cache's greedy answer (`--max-tokens`), then teacher-forced: each
prompt + answer scored with `prompt_logprobs` in 16-token chunks (every chunk attends to the earlier ones through
the cache) by the fp32 and the 16-bit engines: top-1 agreement over the answer positions, the mean |change| of the
chosen token's logprob; and the 16-bit engine's own greedy answer, compared whole with fp32's.

    .venv/bin/python benchmarks/kv_cache_dtype.py [--model models/smollm2-135m-instruct] [--threads 2]
        [--shapes 1x2048 8x1024 32x512] [--steps 12] [--repeats 3] [--questions 16] [--parts speed quality]
        [--served] [--parts chunks --rounds 9] [--llamacpp]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from router.front.intake import Frontend
from splitserve.bench.provenance import model_id, portable_args
from splitserve.engine import Engine, EngineConfig, SamplingParams

ROOT = Path(__file__).resolve().parent
DTYPES = ("float32", "float16", "bfloat16")
QUESTIONS = ["What is the capital of France?", "Write a short poem about the sea.", "Explain photosynthesis briefly.",
             "Give three tips for learning a language.", "Describe a sunset over the sea.", "How do vaccines work?",
             "What are the benefits of regular exercise?", "Write a haiku about winter.", "Why is the sky blue?",
             "Explain how a bicycle works.", "List five fruits and say one thing about each.",
             "How do airplanes stay in the air?", "What is machine learning?", "Tell me a fun fact about octopuses.",
             "How should I prepare for a job interview?", "Summarize the plot of Romeo and Juliet."]


def engines(model: str, batched: int, kv_bytes: int) -> dict[str, Engine]:
    return {d: Engine(model, EngineConfig(kv_cache_dtype=d, max_num_batched_tokens=batched, kv_cache_bytes=kv_bytes,
                                          max_num_seqs=64)) for d in DTYPES}


def _llamacpp_step_ms(args, batch: int, context: int) -> float:
    """llama-batched-bench's decode at this shape (-npp context -ntg 32 -npl batch), as ms per step."""
    import llamacpp

    gguf = llamacpp.convert_f32(Path(args.model), llamacpp.CACHE / "gguf" / f"{Path(args.model).name}-f32.gguf")
    tok_s = llamacpp.batched_bench(gguf, args.threads, context, 32, [batch])[batch]["decode_tok_s"]
    return batch * 1e3 / tok_s


def prefill(engine: Engine, batch: int, context: int, steps: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(batch):
        engine.add_request([rng.randrange(100, 40000) for _ in range(context)],
                           SamplingParams(max_tokens=steps + 8, ignore_eos=True))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.requests.values()):
        engine.step()


def speed(args) -> dict:
    out = {}
    for shape in args.shapes:
        batch, context = map(int, shape.split("x"))
        built = engines(args.model, 2048, (batch * (context + args.steps * args.repeats + 64) * 46080) + (64 << 20))
        for engine in built.values():
            prefill(engine, batch, context, args.steps * args.repeats, seed=batch)
        times = {d: [] for d in DTYPES}
        peer = []  # llama.cpp's decode step at the same shape (f16 KV, its default), between our rounds
        for i in range(args.repeats * args.steps):
            if args.llamacpp and i % args.steps == 0:
                peer.append(_llamacpp_step_ms(args, batch, context))
            for dtype, engine in built.items():
                start = time.perf_counter()
                engine.step()
                times[dtype].append(time.perf_counter() - start)
        medians = {d: statistics.median(t) * 1e3 for d, t in times.items()}
        if peer:
            medians["llama.cpp"] = statistics.median(peer)
        out[shape] = {"step_ms": {d: round(m, 2) for d, m in medians.items()},
                      "vs_fp32": {d: round(medians[d] / medians["float32"], 3) for d in medians if d != "float32"},
                      "kv_tokens_per_GiB": {d: e._blocks_for(1 << 30) * e.config.block_size for d, e in built.items()}}
        print(shape, json.dumps(out[shape]), flush=True)
        del built
    return out


def quality(args) -> dict:
    frontend = Frontend.from_model_dir(args.model)
    chats = [frontend.prompt_ids(messages=[{"role": "user", "content": q}]) for q in QUESTIONS[:args.questions]]
    built = engines(args.model, 16, 256 << 20)
    greedy = SamplingParams(max_tokens=args.max_tokens)
    answers = {d: [o.token_ids for o in e.generate(chats, greedy)] for d, e in built.items()}
    forced = [c + a for c, a in zip(chats, answers["float32"])]
    scoring = SamplingParams(max_tokens=1, prompt_logprobs=1)
    scored = {d: e.generate(forced, scoring) for d, e in built.items()}
    out = {}
    for dtype in DTYPES[1:]:
        agree, moved = [], []
        for chat, ref, got in zip(chats, scored["float32"], scored[dtype]):
            for r, g in list(zip(ref.prompt_logprobs, got.prompt_logprobs))[len(chat):]:
                agree.append(r[1][0][0] == g[1][0][0])
                moved.append(abs(r[0] - g[0]))
        same = sum(a == b for a, b in zip(answers["float32"], answers[dtype]))
        out[dtype] = {"teacher_forced_top1": round(sum(agree) / len(agree), 4), "positions": len(agree),
                      "mean_abs_logprob_change": round(statistics.mean(moved), 5),
                      "max_abs_logprob_change": round(max(moved), 4),
                      "greedy_answers_identical": f"{same}/{len(chats)}"}
        print(dtype, json.dumps(out[dtype]), flush=True)
    return out


def chunks(args) -> dict:
    """RAG blending with Redis the only chunk tier (a private redis-server, layer-by-layer loading), in process: an
    fp32-KV engine over chunks stored in fp32 and a float16-KV engine over the same passages stored in float16,
    alternating (ABBA) over rounds of 4 MuSiQue passages in a random order and a question; TTFT = plan (Redis
    reads) + blended prefill (the nodes' defaults: Cache-Craft planning) + the first token, the bytes read, and
    whether the first tokens agree."""
    from splitserve.bench import traces
    from splitserve.chunkcache.documents import document_prompt
    from splitserve.chunkcache.keys import model_fingerprint
    from splitserve.chunkcache.redis_tier import RedisTier
    from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
    from splitserve.chunkcache.store import ChunkStore
    from splitserve.chunkcache.tiers import LocalTier
    from splitserve.localcluster.redis_server import start_private_redis

    items = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())
    pool = list(dict.fromkeys(c["text"] for item in items[:3] for c in item["ctxs"]))[:8]
    redis_server, caches = start_private_redis(), {}
    try:
        for dtype in ("float32", "float16"):
            engine = Engine(args.model, EngineConfig(kv_cache_dtype=dtype, kv_cache_bytes=512 << 20))
            cfg = engine.model_config
            tier = RedisTier(redis_server.url, model_fingerprint(args.model), dtype, timeout_s=10.0,
                             layout=(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim))
            cache = ChunkCache(engine, ChunkStore(LocalTier(0), tier, dtype=engine.config.kv_torch_dtype),
                               ChunkCacheConfig(live_variants=0))
            ids, spans = document_prompt(engine.tokenizer, pool, "")
            for s, n in spans:
                cache.store.put(*cache.compute_alone(engine, ids[s:s + n], ids[:spans[0][0]]))
            caches[dtype] = (engine, cache, tier)
        rng, rounds = random.Random(0), []
        for r in range(args.rounds + 1):  # round 0 warms up
            ids, spans = document_prompt(caches["float32"][0].tokenizer, rng.sample(pool, 4),
                                         items[r % len(items)]["question"])
            out = {}
            for dtype in (("float32", "float16") if r % 2 == 0 else ("float16", "float32")):
                engine, cache, tier = caches[dtype]
                before, start = tier.bytes_read, time.perf_counter()
                outcome = cache.blend(engine, "r", ids, cache.plan(ids, spans), SamplingParams(max_tokens=1), 0)
                out[dtype] = {"ttft_s": time.perf_counter() - start, "bytes_read": tier.bytes_read - before,
                              "token": outcome.sample.token_id}
                engine.cancel_reservation("r")
            if r:
                rounds.append(out)
    finally:
        redis_server.stop()
    med = lambda dtype, key: statistics.median(x[dtype][key] for x in rounds)
    out = {d: {"ttft_s": round(med(d, "ttft_s"), 4), "bytes_read": med(d, "bytes_read")}
           for d in ("float32", "float16")}
    out["ttft_ratio"] = round(statistics.median(x["float16"]["ttft_s"] / x["float32"]["ttft_s"] for x in rounds), 3)
    out["same_first_token"] = f"{sum(x['float16']['token'] == x['float32']['token'] for x in rounds)}/{len(rounds)}"
    out["prompt_tokens"] = "4 passages + question"
    print("chunks", json.dumps(out), flush=True)
    return out


def served(args) -> dict:
    """RAG prompts (three MuSiQue passages and the question, ~1,800 tokens) at concurrency 1 through two 1 prefill +
    1 decode clusters (one thread per node), fp32 and float16 KV, asked alternately by the official `openai` client,
    streamed: TTFT (the KV moves between the nodes before the first decode) and TPOT (each step reads the context)."""
    import openai

    from served_prompts import ask_streamed, workloads
    from splitserve.localcluster.cluster import LocalCluster

    texts = workloads(args.served_prompts)["rag_qa"]
    with LocalCluster(args.model, threads=1, http_port=-1) as fp32, \
            LocalCluster(args.model, threads=1, http_port=-1, node_args=["--kv-cache-dtype=float16"]) as half:
        clients = {name: openai.OpenAI(base_url=c.http_url + "/v1", api_key="unused", timeout=600)
                   for name, c in (("float32", fp32), ("float16", half))}
        rows = {name: [] for name in clients}
        for r in range(args.repeats):
            for text in texts:
                for name in (list(clients) if r % 2 == 0 else list(clients)[::-1]):
                    rows[name].append(ask_streamed(clients[name], Path(args.model).name, text, args.served_tokens))
    out = {name: {metric: round(statistics.median(x[metric] for x in v), 2) for metric in ("ttft_ms", "tpot_ms")}
           for name, v in rows.items()}
    out["tpot_ratio"] = round(out["float16"]["tpot_ms"] / out["float32"]["tpot_ms"], 3)
    out["ttft_ratio"] = round(out["float16"]["ttft_ms"] / out["float32"]["ttft_ms"], 3)
    out["same_answers"] = f"{sum(a['text'] == b['text'] for a, b in zip(rows['float32'], rows['float16']))}/" \
                          f"{len(rows['float32'])}"
    print("served", json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["1x2048", "8x1024", "32x512"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--served", action="store_true", help="also the served comparison (1P+1D, concurrency 1)")
    parser.add_argument("--llamacpp", action="store_true", help="speed: llama.cpp's decode step at each shape too "
                        "(llama-batched-bench, f16 KV: build it first with benchmarks/vs_llamacpp.py --build)")
    parser.add_argument("--served-prompts", type=int, default=6)
    parser.add_argument("--served-tokens", type=int, default=128)
    parser.add_argument("--parts", nargs="*", default=["speed", "quality"], choices=["speed", "quality", "chunks"])
    parser.add_argument("--rounds", type=int, default=9, help="chunks: measured rounds")
    parser.add_argument("--out", default="results/kv_cache_dtype_smollm2.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {"command": {"script": "benchmarks/kv_cache_dtype.py", **portable_args(vars(args))},
           "model": model_id(args.model), "torch_threads": args.threads}
    out.update({part: {"speed": speed, "quality": quality, "chunks": chunks}[part](args) for part in args.parts})
    if args.served:
        out["served"] = served(args)
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
