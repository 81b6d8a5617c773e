"""What embedding traffic does to chat decoding: disaggregated against colocated, on one machine.

An embedding is prefill work alone: on a disaggregated cluster it runs on the prefill node and
never enters the decode node's batches; on a colocated node it shares the engine's steps with
the decoding requests. Each setup serves the same chat load (`splitserve bench` over HTTP:
fixed lengths, `--concurrency` in flight, output forced to `--output-len`) alone and then while
a client thread keeps sending embedding requests (8 MuSiQue passages of `--embed-len` tokens
each, one request after another), alone and loaded taking turns for `--rounds` rounds. Per run:
median TTFT and TPOT of the chat requests, and the embedding inputs answered per second. The
machine is shared and noisy: compare the loaded / alone ratios of one setup, measured side by
side, more than absolute times. Setups on the same cores: 1 prefill + 1 decode node with 1 torch
thread each, and 1 colocated node with 2 threads.

    python benchmarks/embeddings_interference.py [--model smollm2-135m-instruct] [--rounds 3]
        [--out results/embeddings_interference_smollm2.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

import openai

from splitserve.bench.provenance import portable_args
from splitserve.bench.prompts import load_tokenizer
from splitserve.localcluster.cluster import LocalCluster
from splitserve.modelgen import ensure_model

from fixed_load import run_fixed_load

TRACE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "traces" / "cacheblend_musique_s.json"
SETUPS = {"1 prefill + 1 decode (1 thread each)": dict(prefill=1, decode=1, threads=1),
          "1 colocated (2 threads)": dict(prefill=0, decode=0, colocated=1, threads=2)}


class EmbeddingLoad:
    """A thread sending embedding requests back to back until stopped; counts the inputs answered."""

    def __init__(self, url: str, passages: list[str], embed_len: int):
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        self.model = self.client.models.list().data[0].id
        self.passages, self.embed_len = passages, embed_len
        self.stop, self.inputs, self.seconds = threading.Event(), 0, 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "EmbeddingLoad":
        self.thread.start()
        time.sleep(1.0)  # the first requests reach the nodes before the chat load starts
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        start, i = time.monotonic(), 0
        while not self.stop.is_set():
            batch = [self.passages[(i + k) % len(self.passages)] for k in range(8)]
            self.client.embeddings.create(model=self.model, input=batch,
                                          extra_body={"truncate_prompt_tokens": self.embed_len})
            self.inputs, i = self.inputs + len(batch), i + 8
        self.seconds = time.monotonic() - start


def chat(url: str, args, tokenizer) -> dict:
    stats = run_fixed_load(url, args, tokenizer).metrics.stats
    return {"ttft_ms": stats["ttft"].median_ms, "tpot_ms": stats["tpot"].median_ms,
            "p99_tpot_ms": stats["tpot"].percentiles_ms[-1][1]}


def measure(model: Path, setup: dict, args, tokenizer, passages: list[str]) -> dict:
    rounds = []
    with LocalCluster(model, http_port=-1, **setup) as cluster:
        chat(cluster.http_url, args, tokenizer)  # warm-up
        for _ in range(args.rounds):
            alone = chat(cluster.http_url, args, tokenizer)
            with EmbeddingLoad(cluster.http_url, passages, args.embed_len) as load:
                loaded = chat(cluster.http_url, args, tokenizer)
            loaded["embedding_inputs_per_s"] = load.inputs / load.seconds
            rounds.append({"alone": alone, "with_embeddings": loaded})
            print(f"  alone TPOT {alone['tpot_ms']:.1f} ms TTFT {alone['ttft_ms']:.0f} ms; with embeddings TPOT "
                  f"{loaded['tpot_ms']:.1f} ms TTFT {loaded['ttft_ms']:.0f} ms, "
                  f"{loaded['embedding_inputs_per_s']:.1f} inputs/s", flush=True)
    ratio = lambda m: statistics.median(r["with_embeddings"][m] / r["alone"][m] for r in rounds)
    return {"rounds": rounds, "tpot_loaded_vs_alone": ratio("tpot_ms"), "ttft_loaded_vs_alone": ratio("ttft_ms"),
            "median_embedding_inputs_per_s": statistics.median(r["with_embeddings"]["embedding_inputs_per_s"]
                                                               for r in rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a preset or a model folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--embed-len", type=int, default=256, help="tokens per embedded passage")
    parser.add_argument("--out", default="results/embeddings_interference_smollm2.json")
    args = parser.parse_args()
    model = Path(args.model) if Path(args.model).is_dir() else ensure_model(args.model)
    tokenizer = load_tokenizer(model)
    passages = [c["text"] for item in json.loads(TRACE.read_text())[:10] for c in item["ctxs"]]
    results = {}
    for name, setup in SETUPS.items():
        print(name, flush=True)
        results[name] = measure(model, setup, args, tokenizer, passages)
    out = {"benchmark": "embeddings_interference", "model": model.name, "config": portable_args(vars(args)),
           "method": __doc__.split("\n\n")[0], "load_average": os.getloadavg(), "setups": results}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name}: TPOT x{r['tpot_loaded_vs_alone']:.2f}, TTFT x{r['ttft_loaded_vs_alone']:.2f} under "
              f"{r['median_embedding_inputs_per_s']:.1f} embedding inputs/s")


if __name__ == "__main__":
    main()
