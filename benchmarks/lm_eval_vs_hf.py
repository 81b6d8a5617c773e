"""lm-evaluation-harness against a splitserve cluster and against HF transformers, on one task.

A client nobody here wrote, scoring texts the way it scores every multiple-choice benchmark: its
`local-completions` model sends batches of tokenized prompts (context + choice) to
`/v1/completions` with `echo`, `logprobs: 1` and one generated token, and sums the logprobs of
the choice's tokens; it tokenizes with the server's /tokenize (`--tokenizer-backend remote`, the
default) or with the model folder's tokenizer.json (`huggingface`). Its `hf` model computes the same sums in-process with HF transformers. The
two runs score the same requests, so their per-request loglikelihoods must agree to float
precision and their accuracies must be equal.

The task (`musique_mc`, written here from the shipped MuSiQue trace, since no dataset can be
downloaded): each of the 100 questions with the passage that holds its gold answer, and four
choices, the gold answer and the gold answers of the next three questions.

Needs lm-eval in a virtual environment of its own that also sees the project's (it is not a
project dependency; built once, under `.cache/`):

    python3.11 -m venv .cache/lmeval
    echo $PWD/.venv/lib/python3.11/site-packages > .cache/lmeval/lib/python3.11/site-packages/splitserve.pth
    .cache/lmeval/bin/pip install "lm-eval[api]==0.4.13"

    python benchmarks/lm_eval_vs_hf.py [--model smollm2-135m-instruct] [--questions 100] [--topology disaggregated]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from splitserve.bench import traces
from splitserve.bench.provenance import portable_args
from splitserve.localcluster.cluster import LocalCluster
from splitserve.modelgen import ensure_model

ROOT = Path(__file__).resolve().parent
LMEVAL_PYTHON = ROOT.parent / ".cache" / "lmeval" / "bin" / "python"
TASK = "musique_mc"
CONTEXT_CHARS = 700  # of the passage, around the gold answer
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}\\nQuestion: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def task_docs(num_questions: int) -> list[dict]:
    """Each question with the passage holding its gold answer (the text around it) and four choices."""
    questions = json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())
    docs = []
    for i, q in enumerate(questions[:num_questions]):
        gold = q["answers"][0]
        text = next((c["text"] for c in q["ctxs"] if gold.lower() in c["text"].lower()), q["ctxs"][0]["text"])
        at = max(0, text.lower().find(gold.lower()) - CONTEXT_CHARS // 2)
        distractors = [questions[(i + k) % len(questions)]["answers"][0] for k in (1, 2, 3)]
        choices = [gold] + [d for d in distractors if d.lower() != gold.lower()][:3]
        label = i % len(choices)  # the gold answer's place rotates
        choices.insert(label, choices.pop(0))
        docs.append({"context": text[at: at + CONTEXT_CHARS].strip(), "question": q["question"],
                     "choices": [" " + c for c in choices], "label": label})
    return docs


def write_task(folder: Path, num_questions: int) -> None:
    data = folder / "musique_mc.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in task_docs(num_questions)))
    (folder / "musique_mc.yaml").write_text(TASK_YAML.format(task=TASK, data=data))


def run_lm_eval(folder: Path, name: str, model: str, model_args: str, batch_size: int,
                extra: tuple[str, ...] = ()) -> tuple[dict, list[dict], float]:
    """(the task's metrics, its logged samples, seconds) of one lm_eval run."""
    out = folder / name
    start = time.monotonic()
    subprocess.run([str(LMEVAL_PYTHON), "-m", "lm_eval", "--model", model, "--model_args", model_args,
                    "--tasks", TASK, "--include_path", str(folder), "--batch_size", str(batch_size),
                    "--output_path", str(out), "--log_samples", *extra], check=True)
    seconds = time.monotonic() - start
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][TASK]
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    return results, sorted(samples, key=lambda s: s["doc_id"]), seconds


def loglikelihoods(samples: list[dict]) -> list[tuple[float, bool]]:
    """(loglikelihood, is_greedy) of every (question, choice) request, in order."""
    return [(float(ll), bool(greedy)) for s in samples for ll, greedy in (r[0] for r in s["resps"])]


def compare(served: list[dict], hf: list[dict]) -> dict:
    ours, theirs = loglikelihoods(served), loglikelihoods(hf)
    diffs = [abs(a - b) for (a, _), (b, _) in zip(ours, theirs, strict=True)]
    picks = lambda samples: [max(range(len(s["resps"])), key=lambda j: float(s["resps"][j][0][0])) for s in samples]
    return {"requests": len(diffs), "loglikelihood_abs_diff_max": max(diffs),
            "loglikelihood_abs_diff_median": statistics.median(diffs),
            "is_greedy_agreement": sum(a == b for (_, a), (_, b) in zip(ours, theirs)) / len(diffs),
            "choice_agreement": sum(a == b for a, b in zip(picks(served), picks(hf))) / len(served)}


def served_model_name(http_url: str) -> str:
    with urllib.request.urlopen(http_url + "/v1/models", timeout=30) as response:
        return json.loads(response.read())["data"][0]["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a preset or an HF model folder")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--topology", choices=["disaggregated", "colocated"], default="disaggregated")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per request (lm_eval --batch_size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per node")
    parser.add_argument("--tokenizer-backend", choices=["remote", "huggingface"], default="remote",
                        help="lm-eval's tokenizer for the served run: the server's /tokenize, or the model folder's")
    parser.add_argument("--out", default="results/lm_eval_vs_hf.json")
    args = parser.parse_args()
    if not LMEVAL_PYTHON.exists():
        sys.exit(f"lm-eval's environment is missing: {LMEVAL_PYTHON} (see this script's docstring)")
    model = Path(args.model) if Path(args.model).is_dir() else ensure_model(args.model)
    split = args.topology == "disaggregated"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_task(folder, args.questions)
        with LocalCluster(model, prefill=int(split), decode=int(split), colocated=int(not split), http_port=-1,
                          threads=args.threads) as cluster:
            tokenizer = f",tokenizer={model}" if args.tokenizer_backend == "huggingface" else ""
            served_args = (f"model={served_model_name(cluster.http_url)},base_url={cluster.http_url}/v1/completions,"
                           f"tokenizer_backend={args.tokenizer_backend}{tokenizer},max_retries=1,timeout=600")
            served = run_lm_eval(folder, "served", "local-completions", served_args, args.batch_size)
        hf = run_lm_eval(folder, "hf", "hf", f"pretrained={model},dtype=float32", args.batch_size, ("--device", "cpu"))
    row = {name: {"acc": r["acc,none"], "acc_norm": r["acc_norm,none"], "seconds": round(s, 1)}
           for name, (r, _, s) in (("splitserve", served), ("hf", hf))}
    out = {"command": {"script": "benchmarks/lm_eval_vs_hf.py", **portable_args(vars(args))}, "model": model.name,
           "lm_eval": "0.4.13", "task": TASK, **row, **compare(served[1], hf[1])}
    print(json.dumps(out, indent=2))
    path = ROOT / args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
