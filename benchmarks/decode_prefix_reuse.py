"""The next turn of a long conversation, disaggregated: how much KV moves to the decode node and what the turn's TTFT
is, in whatever commit this checkout holds. Since the decode node's Reserve takes the leading blocks its prefix cache
holds (the earlier turns decoded there), only the KV after them moves; before, the whole conversation's did. Compare
two commits by running this in each (a `git worktree` of the older one, PYTHONPATH pointing at it), alternating.

One cluster, 1 prefill + 1 decode node (SmolLM2, KV over torch/gloo, one torch thread each, prefix caching on), no
conditional disaggregation. Each conversation: a first message with `--passages` MuSiQue passages and a question
(greedy, 48 tokens), then the follow-up "Answer in one short sentence." twice: the first time the prefill node
computes the last answer and the new message, the second time (the same prompt again) almost nothing, so its TTFT
is mostly the hand-off. Per follow-up: the router's TTFT and the KV bytes the decode node received (its
`splitserve_kv_transfer_bytes_total{direction="receive"}`), medians over the conversations.

    .venv/bin/python benchmarks/decode_prefix_reuse.py [--model models/smollm2-135m-instruct] [--passages 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import uuid
from pathlib import Path

from splitserve.bench import traces
from splitserve.bench.provenance import model_id, portable_args
from splitserve.client import Client
from splitserve.localcluster.cluster import LocalCluster
from prom import kv_received_bytes

ROOT = Path(__file__).resolve().parent
FOLLOW_UP = "Answer in one short sentence."


def conversation(client: Client, decode_metrics: str, question: str, passages: tuple[str, ...], args) -> dict:
    salt = uuid.uuid4().hex  # no conversation finds another's blocks
    messages = [{"role": "user", "content": "\n\n".join(passages[:args.passages]) +
                 f"\n\nUsing the passages above, answer: {question}"}]
    answer = client.complete(messages=messages, max_tokens=48, cache_salt=salt)
    messages += [{"role": "assistant", "content": answer.text}, {"role": "user", "content": FOLLOW_UP}]
    row = {"prompt_tokens": 0}
    for name in ("follow_up", "again"):
        before = kv_received_bytes([decode_metrics])
        result = client.complete(messages=messages, max_tokens=4, cache_salt=salt)
        assert result.final.prefill_node != result.final.decode_node
        row["prompt_tokens"] = result.final.prompt_tokens
        row[name] = {"ttft_s": result.final.ttft_s, "kv_mb": (kv_received_bytes([decode_metrics]) - before) / 1e6}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--passages", type=int, default=6, help="passages in the first message (about 600 tokens each)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--out", default="results/decode_prefix_reuse_smollm2.json")
    args = parser.parse_args()
    questions = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE))
    with LocalCluster(args.model, prefill=1, decode=1, transport="torch", threads=1,
                      node_args=["--metrics-port=-1"]) as cluster, Client(cluster.url, timeout_s=300) as client:
        decode_metrics = next(s.extra["metrics"] for role, s in cluster.nodes if role == "decode")
        rows = [conversation(client, decode_metrics, *questions[i], args) for i in range(args.conversations + 1)][1:]
    median = lambda name, key: round(statistics.median(r[name][key] for r in rows), 4)
    out = {"command": {"script": "benchmarks/decode_prefix_reuse.py", **portable_args(vars(args))},
           "model": model_id(args.model), "commit": _commit(),
           "setup": "1 prefill + 1 decode node, 1 torch thread each, KV over torch/gloo, prefix caching on; one "
                    "warm-up conversation dropped",
           "median_prompt_tokens": statistics.median(r["prompt_tokens"] for r in rows),
           **{name: {"median_ttft_s": median(name, "ttft_s"), "median_kv_mb": median(name, "kv_mb")}
              for name in ("follow_up", "again")},
           "rows": rows}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=2))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


def _commit() -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return git.stdout.strip()


if __name__ == "__main__":
    main()
