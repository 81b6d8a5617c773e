"""Chunk-cache answer quality on a real model: CacheBlend and Cache-Craft vs full prefill, MuSiQue.

For each of CacheBlend's 100 MuSiQue questions (10 retrieved passages + the question, through the
chat template), every passage's KV is computed alone after the prompt head (as ingest stores it),
then the prompt is prefilled

- `full`: a full prefill (the reference; one pass per question, reused by every comparison),
- `prefix_caching`: a previous request held the same passages in another order, so only the
  longest block-aligned common prefix is reused; its KV is exact, so its answer is full prefill's
  by construction and only its computed-token count is measured,
- `full_reuse`: every cached row reused as it is (RoPE-moved; r = 0, PromptCache),
- `hkvd_R` / `random_R`: CacheBlend at ratio R (check layer 1), rows chosen by KV deviation or at random,
- `cachecraft`: Cache-Craft planning (per-chunk budgets from the stored variants),

and the engine decodes the greedy answer (up to 32 tokens) from that KV. Scores: answer F1 against
the gold answers (SQuAD token F1), ROUGE-L F1 and exact agreement with full prefill's answer,
KL(full || case) and top-1 agreement of the first token, computed rows (mean over layers) / prompt
rows. `full_plain` is full prefill on the same question without the chat template (F1 only).
Results are rewritten after every question, so a cut-off run still leaves its numbers.

    python benchmarks/chunkcache_quality.py [--model DIR] [--questions 100] [--passages 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from chunkcache_common import blend_and_decode, parse_indices
from splitserve.bench import traces
from splitserve.bench.provenance import model_id
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.qa_prompt import QAPrompt, qa_prompt
from splitserve.chunkcache.quality import answer_f1, first_token_scores, rouge_l_f1
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.modelgen import ensure_model

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "chunkcache_quality.json"
MAX_ANSWER_TOKENS = 32
RATIOS = (0.05, 0.15, 0.3)
METRICS = ("f1", "rouge_l", "exact", "kl", "top1", "computed_fraction", "time_s")


def case_configs() -> dict[str, ChunkCacheConfig]:
    cases = {"full_reuse": ChunkCacheConfig(BlendConfig((0,), (0.0,)), planning="ratio")}
    for ratio in RATIOS:
        for selection, seed in (("hkvd", None), ("random", 0)):
            cases[f"{selection}_{ratio}"] = ChunkCacheConfig(BlendConfig((1,), (ratio,), random_seed=seed),
                                                             planning="ratio")
    cases["cachecraft"] = ChunkCacheConfig(BlendConfig((1,), (0.15,)), planning="cachecraft")
    return cases


def selection_configs(ratio: float = 0.15) -> dict[str, ChunkCacheConfig]:
    """Other row selections at one ratio (--cases; chunkcache_selection.py compares them by first token)."""
    blends = {"hkvd_layer2": BlendConfig((2,), (ratio,)), "hkvd_gradual": BlendConfig((1, 2, 3), (0.3, 0.2, ratio)),
              **{f"hkvd_{d}": BlendConfig((1,), (ratio,), deviation=d) for d in ("v", "k_rel")},
              **{d: BlendConfig((1,), (ratio,), deviation=d) for d in ("attn", "k_attn", "v_attn")},
              "v_attn_layer2": BlendConfig((2,), (ratio,), deviation="v_attn"),
              "v_attn_gradual": BlendConfig((1, 2, 3), (0.3, 0.2, ratio), deviation="v_attn")}
    cases = {f"{name}_{ratio}": ChunkCacheConfig(blend, planning="ratio") for name, blend in blends.items()}
    for d in ("attn", "v_attn"):
        cases[f"cachecraft_{d}"] = ChunkCacheConfig(BlendConfig((1,), (ratio,), deviation=d), planning="cachecraft")
    return cases


FULL = ChunkCacheConfig(BlendConfig((1,), (1.0,)), planning="ratio")


def run_case(engine: Engine, store: ChunkStore, qa: QAPrompt, config: ChunkCacheConfig, reuse: bool = True,
             adjust=None) -> dict:
    """Blends (no reuse: a full prefill), then decodes greedily in the engine from that KV.
    adjust: (plan) -> None, changes the reuse plan first (e.g. its per-chunk budgets)."""
    start = time.perf_counter()
    cache = ChunkCache(engine, store, config, prefix=qa.head)
    params = SamplingParams(max_tokens=MAX_ANSWER_TOKENS)
    plan = cache.plan(qa.ids, qa.spans if reuse else [])
    if adjust is not None:
        adjust(plan)
    tokens, outcome = blend_and_decode(engine, cache, qa.ids, plan, params)
    return {"logits": outcome.logits, "answer": engine.tokenizer.decode(tokens).strip(),
            "computed_fraction": outcome.computed_rows / len(qa.ids), "time_s": time.perf_counter() - start}


def score(full: dict, case: dict, golds: list[str]) -> dict:
    return {"answer": case["answer"], "f1": answer_f1(case["answer"], golds),
            "rouge_l": rouge_l_f1(case["answer"], full["answer"]), "exact": float(case["answer"] == full["answer"]),
            **first_token_scores(full["logits"], case["logits"]),
            "computed_fraction": case["computed_fraction"], "time_s": case["time_s"]}


def prefix_caching(engine: Engine, item: dict, qa: QAPrompt, full: dict, index: int, num_passages: int) -> dict:
    """A previous request with the passages shuffled left its blocks; the rest is computed."""
    order, rng = list(range(len(qa.spans))), random.Random(index)
    while len(order) > 1 and order == sorted(order):
        rng.shuffle(order)  # one generator: a fresh Random(index) would give the same identity shuffle forever
    previous = qa_prompt(engine.tokenizer, {**item, "ctxs": [item["ctxs"][i] for i in order]}, True, num_passages)
    common = next((i for i, (a, b) in enumerate(zip(qa.ids, previous.ids)) if a != b), len(qa.ids))
    block = engine.config.block_size
    cached = min(common, len(qa.ids) - 1) // block * block
    return score(full, {**full, "computed_fraction": 1 - cached / len(qa.ids)}, item["answers"])


def passages_stored(engine: Engine, qa: QAPrompt) -> ChunkStore:
    """A store holding every passage of the prompt computed alone after its head (as a node stores a miss)."""
    store = ChunkStore(LocalTier(1 << 34))
    ingest = ChunkCache(engine, store, prefix=qa.head)
    for s, n in qa.spans:
        store.put(*ingest.compute_alone(engine, qa.ids[s:s + n]))
    return store


def one_question(engine: Engine, item: dict, index: int, num_passages: int, plain: bool,
                 cases: dict[str, ChunkCacheConfig] | None = None) -> dict:
    qa = qa_prompt(engine.tokenizer, item, True, num_passages)
    store = passages_stored(engine, qa)
    golds = item["answers"]
    full = run_case(engine, store, qa, FULL, reuse=False)
    out = {"index": index, "question": item["question"], "gold": golds, "num_tokens": len(qa.ids),
           "cases": {"full": score(full, full, golds)}}
    out["cases"]["prefix_caching"] = prefix_caching(engine, item, qa, full, index, num_passages)
    for name, config in (case_configs() if cases is None else cases).items():
        out["cases"][name] = score(full, run_case(engine, store, qa, config), golds)
    if plain:
        bare = run_case(engine, store, qa_prompt(engine.tokenizer, item, False, num_passages), FULL, reuse=False)
        out["cases"]["full_plain"] = {"answer": bare["answer"], "f1": answer_f1(bare["answer"], golds)}
    return out


def summarize(questions: list[dict]) -> dict[str, dict]:
    names = list(dict.fromkeys(name for q in questions for name in q["cases"]))
    out = {}
    for name in names:
        rows = [q["cases"][name] for q in questions if name in q["cases"]]
        out[name] = {m: statistics.mean(r[m] for r in rows) for m in METRICS if all(m in r for r in rows)}
        out[name]["num_questions"] = len(rows)
    for ratio in (r for r in RATIOS if f"hkvd_{r}" in out and "full_reuse" in out):
        worse = [q["index"] for q in questions if q["cases"][f"hkvd_{ratio}"]["kl"] > q["cases"]["full_reuse"]["kl"]]
        out[f"hkvd_{ratio}"]["kl_worse_than_full_reuse"] = worse
    if "prefix_caching" in out and "cachecraft" in out:
        saved = 1 - out["cachecraft"]["computed_fraction"] / out["prefix_caching"]["computed_fraction"]
        out["cachecraft"]["fewer_computed_than_prefix_caching"] = saved
    return out


def plot(summary: dict[str, dict], num_questions: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    if any(f"hkvd_{r}" not in summary for r in RATIOS):
        return  # a run of --cases only: no curves to draw
    for selection, style in (("hkvd", "o-"), ("random", "s--")):
        rows = [summary["full_reuse"]] + [summary[f"{selection}_{r}"] for r in RATIOS] + [summary["full"]]
        x = [r["computed_fraction"] for r in rows]
        axes[0].plot(x, [r["rouge_l"] for r in rows], style, label=f"CacheBlend, {selection}")
        axes[1].plot(x, [r["kl"] for r in rows], style, label=f"CacheBlend, {selection}")
    for name, marker in (("cachecraft", "*"), ("prefix_caching", "D"), ("full_reuse", "x")):
        row = summary[name]
        axes[0].plot(row["computed_fraction"], row["rouge_l"], marker, markersize=11, label=name)
        axes[1].plot(row["computed_fraction"], row["kl"], marker, markersize=11, label=name)
    axes[0].axhline(0.8, color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="computed rows / prompt rows", ylabel="ROUGE-L F1 vs full prefill's answer", ylim=(0, 1.05))
    axes[1].set(xlabel="computed rows / prompt rows", ylabel="first-token KL(full || reuse)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Chunk-cache reuse on SmolLM2-135M-Instruct, MuSiQue ({num_questions} questions, chat template)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def kv_budget_bytes(engine: Engine, lengths: list[int]) -> int:
    cfg = engine.model_config
    longest = max(lengths) + MAX_ANSWER_TOKENS
    if longest > cfg.max_position_embeddings:
        raise SystemExit(f"a prompt needs {longest} positions (prompt + {MAX_ANSWER_TOKENS} answer tokens) but the "
                         f"model has {cfg.max_position_embeddings}: use fewer --passages")
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4  # K and V, fp32
    block = engine.config.block_size
    return (longest // block + 2) * block * per_token


def question_parser(description: str, default_questions: str, out: Path) -> argparse.ArgumentParser:
    """The command line of the scripts that look closer at a few questions (ablation, fixes)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, default=None, help="default: the smollm2-135m-instruct preset")
    parser.add_argument("--questions", default=default_questions, help="comma-separated question indices")
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def load_questions(args) -> tuple[Engine, list[tuple[int, dict]]]:
    """question_parser's args -> the engine (KV budget sized for them) and (index, item) per question."""
    torch.set_num_threads(args.threads)
    everything = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())
    items = [(int(i), everything[int(i)]) for i in args.questions.split(",")]
    args.model = args.model or ensure_model("smollm2-135m-instruct")
    return load_engine(args.model, [item for _, item in items], args.passages), items


def load_engine(model: Path, items: list[dict], num_passages: int) -> Engine:
    probe = Engine(model, EngineConfig(kv_cache_bytes=1 << 20, enable_prefix_caching=False))
    lengths = [len(qa_prompt(probe.tokenizer, it, chat, num_passages).ids) for it in items for chat in (True, False)]
    return Engine(model, EngineConfig(kv_cache_bytes=kv_budget_bytes(probe, lengths), enable_prefix_caching=False))


def write(path: Path, args, questions: list[dict], start: float) -> dict:
    summary = summarize(questions)
    result = {"model": model_id(args.model), "dtype": "float32", "chat_template": True, "check_layer": 1,
              "passages_per_question": args.passages, "max_answer_tokens": MAX_ANSWER_TOKENS, "ratios": RATIOS,
              "num_questions": len(questions), "threads": args.threads, "wall_s": time.perf_counter() - start,
              "summary": summary, "questions": questions}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    plot(summary, len(questions), path.with_suffix(".png"))
    return summary


def previous_questions(args) -> list[dict]:
    """Questions already run: --out's with --resume, and every --merge file's (same --passages)."""
    paths = ([args.out] if args.resume and args.out.exists() else []) + list(args.merge)
    questions = {}
    for path in paths:
        result = json.loads(path.read_text())
        if result["passages_per_question"] != args.passages:
            raise SystemExit(f"{path} has {result['passages_per_question']} passages per question, not {args.passages}")
        questions.update((q["index"], q) for q in result["questions"])
    return [questions[i] for i in sorted(questions)]


def pick_cases(names: str) -> dict[str, ChunkCacheConfig]:
    known = {**case_configs(), **selection_configs()}
    unknown = [n for n in names.split(",") if n not in known]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {', '.join(known)}")
    return {n: known[n] for n in names.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="HF folder of a real model (default: the "
                        "smollm2-135m-instruct preset, made on first use)")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--first", type=int, default=0, help="index of the first question")
    parser.add_argument("--indices", default=None, help="question indices instead of --first/--questions, e.g. 0-23,25")
    parser.add_argument("--cases", default=None, help="comma-separated case names instead of the standard set, from: "
                        + ", ".join(selection_configs()))
    parser.add_argument("--passages", type=int, default=10)
    parser.add_argument("--plain-every", type=int, default=1, help="full prefill without the chat template on "
                        "every Nth question (0: never)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot of --out and exit")
    parser.add_argument("--resume", action="store_true", help="keep the questions already in --out (same "
                        "--passages) and run only the others")
    parser.add_argument("--merge", type=Path, action="append", default=[], help="also keep the questions of this "
                        "result file (repeatable; e.g. a second process over other questions); --questions 0 only merges")
    args = parser.parse_args()
    if args.plot_only:
        result = json.loads(args.out.read_text())
        return plot(result["summary"], result["num_questions"], args.out.with_suffix(".png"))
    torch.set_num_threads(args.threads)
    everything = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())
    indices = parse_indices(args.indices) if args.indices else range(args.first, args.first + args.questions)
    cases = None if args.cases is None else pick_cases(args.cases)
    args.model = args.model or ensure_model("smollm2-135m-instruct")
    start, questions = time.perf_counter(), previous_questions(args)
    done = {q["index"] for q in questions}
    items = [(i, everything[i]) for i in indices if i < len(everything) and i not in done]
    engine = load_engine(args.model, [item for _, item in items], args.passages) if items else None
    for i, item in items:
        plain = args.plain_every > 0 and (i - args.first) % args.plain_every == 0
        questions.append(one_question(engine, item, i, args.passages, plain, cases))
        write(args.out, args, questions, start)
        print(f"question {i}: {questions[-1]['num_tokens']} tokens, {time.perf_counter() - start:.0f}s", flush=True)
    summary = write(args.out, args, questions, start)
    for name, row in summary.items():
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})


if __name__ == "__main__":
    main()
