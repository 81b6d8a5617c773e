"""The prefix store (`--prefix-store-url`, splitserve/prefixstore) on the real model: how long a prompt's first
token takes on a node that reads the prompt's blocks from Redis, against computing them, against its own prefix
cache.

Two engines in one process (`--threads` each, used one at a time), each with a prefix store on one private
redis-server, as two prefill or mixed nodes naming the same Redis. Prompts: MuSiQue passages (../shared/data/
traces) joined to about `--lengths` tokens, through the chat template, a new prompt every time. Per prompt: node A
computes it (neither node has seen it: `computed`), its blocks are stored; node B reads them from Redis and
computes the last partial block (`read`); B again, from its own prefix cache (`local`). Time to the first output,
through the same admission path the nodes take; the lengths alternate within every repeat, one KV dtype after the
other (one pair of engines at a time); medians over `--repeats`, and the read / computed ratio.

`--served`: conversations through a real cluster, 2 prefill + 1 decode nodes (`splitserve up`'s layout, the
host's cores shared), round robin so that every turn lands on the other prefill node, `--variants` one cluster after
the other (a private redis-server each): without a store (`plain`), with `--prefix-store` (`prefix_store`: the
decode node stores the answers too), and with it but `--no-prefix-store-answers`; each conversation is a system prompt
of MuSiQue passages (about `--served-tokens`) and `--turns` user turns, each sent `--think-s` after the answer
before it (a user reading it: a prompt's blocks are in Redis about 0.15 s after its prefill on an idle node, 1-1.5 s
on this 2-core host while the decode node takes the cores), answers greedy (`--served-max-tokens`), streamed by
the official `openai` client: median TTFT per turn and median cached prompt tokens; `answers_as_plain`: per turn,
the conversations whose answers so far are word for word the plain cluster's. `--long-answers`: follow-ups that
ask for long answers (the case the decode node's stored answers are for).

    .venv/bin/python benchmarks/prefix_store.py [--model models/smollm2-135m-instruct] [--threads 2]
        [--lengths 512 1024 2048] [--repeats 5] [--kv-dtypes auto float16] [--served [--conversations 6]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import torch

from served_prompts import ask_streamed
from splitserve.bench import traces
from splitserve.bench.provenance import model_id, portable_args
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.localcluster.redis_server import start_private_redis
from splitserve.prefixstore.node_path import build_prefix_store, shared_admission
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import run_streaming

ROOT = Path(__file__).resolve().parent
FIRST_TOKEN = SamplingParams(max_tokens=1, temperature=0)


class SharingNode:
    def __init__(self, model: str, url: str, kv_dtype: str):
        self.loop = EngineLoop(Engine(model, EngineConfig(kv_cache_dtype=kv_dtype, kv_cache_bytes=1 << 30)))
        self.loop.start()
        self.store = build_prefix_store(url, 3600, model, self.loop)

    def first_token(self, prompt: list[int], rid: str) -> tuple[float, int, int]:
        """(seconds to the first output, its token, prompt tokens not computed)."""
        async def run():
            start = time.perf_counter()
            admit = lambda engine: engine.add_request(prompt, FIRST_TOKEN, rid)
            admission = await shared_admission(self.store, prompt, FIRST_TOKEN, admit)
            async for out in run_streaming(self.loop, rid, admission.admit):
                seconds = time.perf_counter() - start
                admission.prefilled()
                return seconds, out.new_token_ids[0], out.num_cached_tokens
        result = asyncio.run(run())
        assert self.store.wait_stored(120)
        return result

    def close(self) -> None:
        self.store.close()
        self.loop.stop()


def prompts(engine: Engine, length: int, count: int, offset: int) -> list[list[int]]:
    """`count` chat prompts of about `length` tokens, passages taken from question `offset` on."""
    questions = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE))
    out = []
    for i in range(count):
        question, passages = questions[(offset + i) % len(questions)]
        text, k = "", 0
        while len(engine.tokenizer.encode(text)) < length - 40:
            text += passages[k % len(passages)] + "\n\n"
            k += 1
        ids = engine.tokenizer.encode_chat([{"role": "user", "content": f"{text}Question: {question}"}])
        out.append(ids[:length])
    return out


def run(args) -> dict:
    server = start_private_redis()
    if server is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    rows, stats = [], {}
    try:
        for offset, dtype in enumerate(args.kv_dtypes):  # one pair of nodes at a time, as a process holds one engine
            a, b = SharingNode(args.model, server.url, dtype), SharingNode(args.model, server.url, dtype)
            try:
                rows += measure(args, a, b, dtype, 100 * offset)
                stats[dtype] = b.store.stats()
            finally:
                a.close()
                b.close()
    finally:
        server.stop()
    return {"rows": rows, "reader_store_stats": stats}


def measure(args, a: SharingNode, b: SharingNode, dtype: str, offset: int) -> list[dict]:
    texts = {n: prompts(a.loop.engine, n, args.repeats + 1, offset + 10 * i) for i, n in enumerate(args.lengths)}
    rows = {n: {"computed": [], "read": [], "local": [], "same_first_token": 0} for n in args.lengths}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        for n in args.lengths:
            prompt = list(texts[n][r])
            computed = a.first_token(prompt, f"a-{n}-{r}")
            read = b.first_token(prompt, f"b-{n}-{r}")
            local = b.first_token(prompt, f"b2-{n}-{r}")
            if r:
                row = rows[n]
                for name, result in (("computed", computed), ("read", read), ("local", local)):
                    row[name].append(result[0])
                row["same_first_token"] += computed[1] == read[1] == local[1]
                row["read_cached_tokens"] = read[2]
    return [_summary(dtype, n, row, args.repeats) for n, row in rows.items()]


def _summary(dtype: str, n: int, row: dict, repeats: int) -> dict:
    medians = {f"{name}_ttft_ms": round(1000 * statistics.median(row[name]), 1)
               for name in ("computed", "read", "local")}
    return {"kv_cache_dtype": dtype, "prompt_tokens": n, **medians,
            "read_over_computed": round(medians["read_ttft_ms"] / medians["computed_ttft_ms"], 3),
            "read_cached_tokens": row["read_cached_tokens"], "same_first_token": f"{row['same_first_token']}/{repeats}"}


FOLLOW_UPS = ["Answer in one sentence.", "Say it more briefly.", "Which passage says so?", "Why?"]
LONG_FOLLOW_UPS = ["Explain in detail how the passages lead to that answer.",
                   "Write a detailed summary of everything the passages say about it."]  # --long-answers


def conversations(args, count: int) -> list[list[dict]]:
    engine_tokens = Engine(args.model).tokenizer
    questions = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE))
    out = []
    for question, passages in questions[60:60 + count]:  # others than the in-process part's
        text, k = "", 0
        while len(engine_tokens.encode(text)) < args.served_tokens:
            text += passages[k % len(passages)] + "\n\n"
            k += 1
        out.append([{"role": "system", "content": f"Answer from these passages:\n\n{text}"},
                    {"role": "user", "content": question}])
    return out


VARIANTS = ("plain", "prefix_store", "prefix_store_prompts_only")  # the last: --no-prefix-store-answers


def served(args) -> dict:
    import openai

    from splitserve.localcluster.cluster import LocalCluster

    chats, out, answers = conversations(args, args.conversations), {}, {}
    for name in args.variants:
        node_args = ["--no-prefix-store-answers"] if name == "prefix_store_prompts_only" else []
        with LocalCluster(args.model, prefill=2, decode=1, http_port=-1, policy="round_robin", private_redis=True,
                          threads=args.threads, share_cores=True, prefix_store=name != "plain",
                          node_args=node_args) as cluster:
            client = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", timeout=600)
            turns = [_conversation(client, Path(args.model).name, list(c), args) for c in chats]
        answers[name] = [[turn[4] for turn in c] for c in turns]
        out[name] = {
            f"turn_{t}": {"ttft_ms_median": round(statistics.median(c[t][0] for c in turns), 1),
                          "cached_tokens_median": statistics.median(c[t][1] for c in turns),
                          "prompt_tokens_before_median": statistics.median(c[t][2] for c in turns),
                          "answer_tokens_median": statistics.median(c[t][3] for c in turns)}
            for t in range(args.turns)}
    if "plain" in answers:
        out["answers_as_plain"] = {name: _same_answers(answers["plain"], texts, args.turns)
                                   for name, texts in answers.items() if name != "plain"}
    return out


def _same_answers(plain: list[list[str]], other: list[list[str]], turns: int) -> dict:
    """Per turn: conversations whose answers up to it are the plain cluster's, word for word (greedy; after a
    first difference the conversations differ)."""
    return {f"turn_{t}": f"{sum(p[:t + 1] == o[:t + 1] for p, o in zip(plain, other))}/{len(plain)}"
            for t in range(turns)}


def _conversation(client, model: str, messages: list[dict], args) -> list[tuple[float, int, int, int, str]]:
    """(TTFT ms, cached prompt tokens, prompt and answer tokens of the turns before, answer tokens, answer) of each
    turn."""
    results, before = [], 0
    follow_ups = LONG_FOLLOW_UPS if args.long_answers else FOLLOW_UPS
    for turn in range(args.turns):
        answer = ask_streamed(client, model, messages, args.served_max_tokens)
        results.append((answer["ttft_ms"], answer["cached_tokens"], before, answer["completion_tokens"],
                        answer["text"]))
        before = answer["prompt_tokens"] + answer["completion_tokens"]
        time.sleep(args.think_s)
        messages += [{"role": "assistant", "content": answer["text"]},
                     {"role": "user", "content": follow_ups[turn % len(follow_ups)]}]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kv-dtypes", nargs="+", default=["auto", "float16"])
    parser.add_argument("--served", action="store_true", help="only the served conversations (above)")
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--served-tokens", type=int, default=1500)
    parser.add_argument("--served-max-tokens", type=int, default=24)
    parser.add_argument("--think-s", type=float, default=2.0)
    parser.add_argument("--long-answers", action="store_true", help="follow-ups that ask for long answers")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="served clusters, one after the other")
    parser.add_argument("--out", default=None, help="default results/prefix_store_smollm2[_served].json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out = args.out or f"results/prefix_store_smollm2{'_served' if args.served else ''}.json"
    out = {"command": {"script": "benchmarks/prefix_store.py", **portable_args(vars(args))},
           "model": model_id(args.model), "torch_threads": args.threads}
    out.update({"served": served(args)} if args.served else run(args))
    print(json.dumps(out.get("served") or out["rows"], indent=1))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
