"""How well the served model's embeddings retrieve: MuSiQue questions against their own passages.

    python benchmarks/embeddings_retrieval.py [--model DIR] [--questions 100] [--threads 2]

For each of CacheBlend's MuSiQue questions (../shared/data/traces/cacheblend_musique_s.json), its 10
retrieved passages are ranked by cosine similarity to the question, with the embeddings
/v1/embeddings serves (splitserve/engine/pooling.py; the engine in this process, which the tests
hold equal to the served vectors and to HF's last_hidden_state): last-token and mean pooling. A
passage counts as relevant when it contains a gold answer (case-insensitive); questions where none
or all do are left out. Beside them: BM25 over the question's passages (k1 1.2, b 0.75, lower-case
words) and a random ranking (its expected scores). Scores: recall@1, recall@3 and MRR of the first
relevant passage. SmolLM2-135M-Instruct is a chat model, not an embedding model: this says what its
vectors are worth for retrieval, not what the API can do with a model trained for it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import torch

from splitserve.engine import Engine, EngineConfig, PoolingParams

ROOT = Path(__file__).resolve().parent
TRACE = ROOT.parent.parent / "shared" / "data" / "traces" / "cacheblend_musique_s.json"
DEFAULT_MODEL = ROOT.parent / ".cache" / "models" / "smollm2-135m-instruct-s0-v1"
RESULTS = ROOT / "results" / "embeddings_retrieval_smollm2.json"
WORD = re.compile(r"\w+")


def cases(limit: int) -> list[dict]:
    """Questions with their passages and which of them hold a gold answer (some but not all do)."""
    kept = []
    for item in json.loads(TRACE.read_text())[:limit]:
        passages = [c["text"] for c in item["ctxs"]]
        answers = [a.lower() for a in item["answers"]]
        relevant = [any(a in p.lower() for a in answers) for p in passages]
        if 0 < sum(relevant) < len(passages):
            kept.append({"question": item["question"], "passages": passages, "relevant": relevant})
    return kept


def scores_of(ranking: list[int], relevant: list[bool]) -> dict:
    first = next(rank for rank, i in enumerate(ranking) if relevant[i])
    found = sum(relevant)
    return {"recall@1": sum(relevant[i] for i in ranking[:1]) / found,
            "recall@3": sum(relevant[i] for i in ranking[:3]) / found, "mrr": 1 / (first + 1)}


def random_expectation(relevant: list[bool]) -> dict:
    n, r = len(relevant), sum(relevant)
    # P(first relevant at rank k) over random orders: C(n - k, r - 1) / C(n, r), ranks from 1
    mrr = sum(math.comb(n - k, r - 1) / math.comb(n, r) / k for k in range(1, n - r + 2))
    return {"recall@1": 1 / n, "recall@3": min(3, n) / n, "mrr": mrr}


def bm25_ranking(question: str, passages: list[str], k1: float = 1.2, b: float = 0.75) -> list[int]:
    docs = [WORD.findall(p.lower()) for p in passages]
    mean_len = sum(map(len, docs)) / len(docs)
    df = Counter(w for d in docs for w in set(d))
    counts = [Counter(d) for d in docs]

    def score(i: int) -> float:
        total = 0.0
        for w in set(WORD.findall(question.lower())):
            idf = math.log(1 + (len(docs) - df[w] + 0.5) / (df[w] + 0.5))
            tf = counts[i][w]
            total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(docs[i]) / mean_len))
        return total
    return sorted(range(len(passages)), key=lambda i: -score(i))


def embedding_ranking(engine: Engine, question: str, passages: list[str], pooling: PoolingParams) -> list[int]:
    vectors = torch.tensor(engine.embed([question] + passages, pooling))
    similarity = vectors[1:] @ vectors[0]  # normalized: cosine
    return sorted(range(len(passages)), key=lambda i: -similarity[i].item())


def mean_scores(rows: list[dict]) -> dict:
    return {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--questions", type=int, default=100, help="the first N questions of the trace")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine(args.model, EngineConfig(num_blocks=512, max_num_batched_tokens=512))
    kept = cases(args.questions)
    rows: dict[str, list[dict]] = {"random (expected)": [], "BM25": [], "embeddings, last token": [],
                                   "embeddings, mean": []}
    start, tokens = time.perf_counter(), 0
    for case in kept:
        question, passages, relevant = case["question"], case["passages"], case["relevant"]
        rows["random (expected)"].append(random_expectation(relevant))
        rows["BM25"].append(scores_of(bm25_ranking(question, passages), relevant))
        for name, kind in (("embeddings, last token", "last"), ("embeddings, mean", "mean")):
            rows[name].append(scores_of(embedding_ranking(engine, question, passages, PoolingParams(kind)), relevant))
        tokens += 2 * sum(len(engine.tokenizer.encode(t)) for t in [question] + passages)
    wall_s = time.perf_counter() - start
    result = {"model": args.model.name, "trace": TRACE.name, "questions_read": args.questions,
              "questions_scored": len(kept), "passages_per_question": 10, "threads": args.threads,
              "embedded_tokens": tokens, "wall_s": round(wall_s, 1),
              "scores": {name: mean_scores(r) for name, r in rows.items()}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, scores in result["scores"].items():
        print(f"{name:24s} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    print(f"{len(kept)} questions, {tokens} tokens embedded in {wall_s:.0f} s")


if __name__ == "__main__":
    main()
