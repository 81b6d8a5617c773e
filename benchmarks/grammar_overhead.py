"""What structured output costs the engine: decode time per token with a JSON-schema grammar against
the same requests free, side by side (alternated, medians), at batch 1, 8 and 32 on the real model,
and the token mask alone (llguidance's mask for SmolLM2's 49,152 tokens, plus unpacking it).

Requests: chat questions asking for a JSON answer (city, country, population), greedy, up to
`--max-tokens`; the grammar ends each when its object is complete, the free ones run to
`--max-tokens` (EOS ignored), so the comparison is per generated token, prefill excluded (each
batch is timed from its first token on, via the engine's own step loop).

    python benchmarks/grammar_overhead.py [--model smollm2-135m-instruct] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from splitserve.bench.provenance import portable_args
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.grammar import allowed_tokens, json_schema_grammar
from splitserve.modelgen import ensure_model

ROOT = Path(__file__).resolve().parent
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"},
                                           "population_millions": {"type": "integer", "minimum": 0, "maximum": 2000}},
          "required": ["city", "country", "population_millions"], "additionalProperties": False}
COUNTRIES = ["France", "Japan", "Kenya", "Peru", "Norway", "India", "Canada", "Egypt"]


def prompts(engine: Engine, n: int) -> list[list[int]]:
    return [engine.tokenizer.encode_chat([{"role": "user", "content": f"What is the capital of "
                                           f"{COUNTRIES[i % len(COUNTRIES)]}? Answer in JSON with the city, its "
                                           "country and its population in millions."}]) for i in range(n)]


def decode_seconds_per_token(engine: Engine, batch: list[list[int]],
                             params: SamplingParams | list[SamplingParams]) -> float:
    """Seconds per generated token after every request's first (the prefills are left out); `params`: all
    requests', or each one's."""
    each = params if isinstance(params, list) else [params] * len(batch)
    ids = [engine.add_request(p, request_params) for p, request_params in zip(batch, each)]
    started, tokens, start = set(), 0, 0.0
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id in started:
                tokens += len(out.new_token_ids)
            elif out.new_token_ids:
                started.add(out.request_id)
        if len(started) == len(ids) and not start:
            start = time.perf_counter()
    return (time.perf_counter() - start) / max(1, tokens)


def mask_ms(engine: Engine, repeats: int) -> float:
    """One mask inside the JSON object's first string (the usual state), median of `repeats`."""
    matcher = engine.grammars.matcher(json_schema_grammar(SCHEMA),
                                      engine.tokenizer.encode('{"city": "Par', add_special_tokens=False))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        allowed_tokens(matcher, engine.model_config.vocab_size, "cpu")
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", default="results/grammar_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = Path(args.model) if Path(args.model).is_dir() else ensure_model(args.model)
    engine = Engine(model, EngineConfig(kv_cache_bytes=1 << 30, max_num_seqs=64, enable_prefix_caching=False))
    grammar = json_schema_grammar(SCHEMA)
    constrained = SamplingParams(max_tokens=args.max_tokens, grammar=grammar)
    free = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    rows = []
    for size in args.batches:
        batch = prompts(engine, size)
        samples = {"free": [], "grammar": []}
        for _ in range(args.repeats):
            samples["free"].append(decode_seconds_per_token(engine, batch, free))
            samples["grammar"].append(decode_seconds_per_token(engine, batch, constrained))
        row = {"batch": size, **{f"{k}_ms_per_token": statistics.median(v) * 1e3 for k, v in samples.items()},
               "ratio": statistics.median(g / f for g, f in zip(samples["grammar"], samples["free"]))}
        print(json.dumps(row))
        rows.append(row)
    out = {"command": {"script": "benchmarks/grammar_overhead.py", **portable_args(vars(args))}, "model": model.name,
           "mask_ms": mask_ms(engine, 50), "rows": rows}
    print(json.dumps(out, indent=2))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
