"""Row selections decoded on the same questions, paired against a baseline case (issue 15).

Reads the standard run (`chunkcache_quality.json`: full prefill, HKVD r = 0.15, ...) and runs of
`chunkcache_quality.py --cases ...` (other selections, same questions); checks that full prefill's
answer is the same in both (the engine is deterministic, so the runs pair), then per case: mean
ROUGE-L / exact / F1 / first-token KL / top-1, questions with ROUGE-L >= 0.8, and paired against the
baseline: questions better / worse / equal by ROUGE-L and KL, the mean ROUGE-L difference with a
95% bootstrap interval (4,000 resamples of the questions, seed 0).

    python benchmarks/chunkcache_paired.py results/chunkcache_quality_selection.json [--baseline hkvd_0.15]
        [--pair cachecraft_v_attn=cachecraft]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("rouge_l", "exact", "f1", "kl", "top1", "computed_fraction")


def bootstrap(diffs: list[float], resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(statistics.mean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def paired(base: dict[int, dict], other: dict[int, dict], baseline: str, name: str,
           reference: dict[int, dict] | None = None) -> dict:
    """base, other: index -> question of each run -> the case's means and its comparison with the baseline;
    reference: the run holding full reuse (default: base)."""
    common = sorted(set(base) & set(other))
    mismatched = [i for i in common if base[i]["cases"]["full"]["answer"] != other[i]["cases"]["full"]["answer"]]
    rows = [other[i]["cases"][name] for i in common]
    ref = [base[i]["cases"][baseline] for i in common]
    out = {m: statistics.mean(r[m] for r in rows) for m in METRICS}
    out.update(num_questions=len(common), full_answer_mismatch=mismatched,
               rouge_l_at_least_0_8=sum(r["rouge_l"] >= 0.8 for r in rows),
               baseline={m: statistics.mean(r[m] for r in ref) for m in METRICS})
    d = [r["rouge_l"] - b["rouge_l"] for r, b in zip(rows, ref)]
    out["rouge_l_vs_baseline"] = {"better": sum(x > 0 for x in d), "worse": sum(x < 0 for x in d),
                                  "equal": sum(x == 0 for x in d), "mean_diff": statistics.mean(d),
                                  "interval_95": bootstrap(d)}
    k = [r["kl"] - b["kl"] for r, b in zip(rows, ref)]
    out["kl_vs_baseline"] = {"below": sum(x < 0 for x in k), "above": sum(x > 0 for x in k),
                             "mean_diff": statistics.mean(k), "interval_95": bootstrap(k)}
    reuse = {i: q["cases"]["full_reuse"]["kl"] for i, q in (reference or base).items() if "full_reuse" in q["cases"]}
    out["kl_worse_than_full_reuse"] = [i for i in common if i in reuse and other[i]["cases"][name]["kl"] > reuse[i]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="chunkcache_quality.py --cases result files")
    parser.add_argument("--base", type=Path, default=RESULTS / "chunkcache_quality.json")
    parser.add_argument("--baseline", default="hkvd_0.15")
    parser.add_argument("--reference", type=Path, default=RESULTS / "chunkcache_quality.json",
                        help="the run with full reuse (r = 0), for the questions where a case's KL is worse")
    parser.add_argument("--pair", action="append", default=[], help="CASE=BASELINE: another baseline for one case "
                        "(e.g. cachecraft_v_attn=cachecraft)")
    parser.add_argument("--out", type=Path, default=RESULTS / "chunkcache_quality_selection_paired.json")
    args = parser.parse_args()
    base = {q["index"]: q for q in json.loads(args.base.read_text())["questions"]}
    other = {q["index"]: q for run in args.runs for q in json.loads(run.read_text())["questions"]}
    reference = {q["index"]: q for q in json.loads(args.reference.read_text())["questions"]}
    names = [n for n in next(iter(other.values()))["cases"] if n not in ("full", "prefix_caching")]
    pairs = dict(p.split("=", 1) for p in args.pair)
    result = {"base": args.base.name, "runs": [r.name for r in args.runs], "baseline": args.baseline, "pairs": pairs,
              "cases": {n: paired(base, other, pairs.get(n, args.baseline), n, reference) for n in names}}
    args.out.write_text(json.dumps(result, indent=1))
    for name, row in result["cases"].items():
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
