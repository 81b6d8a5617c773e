"""What LoRA adapters cost the engine on the real model: decode time per token with every request on an adapter,
and with a batch mixing the base model and two adapters, against the same requests on the base model alone,
side by side (alternated, medians of per-repeat ratios), at batch 1, 8 and 32 (the mix from batch 8: requests
alternate base, adapter a, base, adapter b); and one 511-token prefill.

Adapters: PEFT's, rank 16 on all seven projections of every layer (q, k, v, o, gate, up, down; random weights:
the cost does not depend on them), written into a temporary folder. Requests as in grammar_overhead.py (chat
questions, greedy, EOS ignored, prefills left out of the decode time).

    python benchmarks/lora_overhead.py [--model smollm2-135m-instruct] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grammar_overhead import decode_seconds_per_token, prompts  # noqa: E402

from splitserve.bench.provenance import portable_args  # noqa: E402
from splitserve.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from splitserve.modelgen import ensure_model  # noqa: E402

ROOT = Path(__file__).resolve().parent
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MIXES = {"base": [None], "one_adapter": ["a"], "mixed": [None, "a", None, "b"]}  # request i runs mix[i % len]


def write_adapter(model: Path, folder: Path, rank: int, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=PROJECTIONS,
                                    init_lora_weights=False)).save_pretrained(str(folder))
    return folder


def decode_rows(engine: Engine, args) -> list[dict]:
    rows = []
    for size in args.batches:
        batch = prompts(engine, size)
        mixes = {mix: names for mix, names in MIXES.items() if len(names) <= size}  # batch 1 mixes nothing
        samples = {mix: [] for mix in mixes}
        for _ in range(args.repeats):
            for mix, names in mixes.items():
                params = [SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, lora=names[i % len(names)])
                          for i in range(size)]
                samples[mix].append(decode_seconds_per_token(engine, batch, params))
        row = {"batch": size, **{f"{mix}_ms_per_token": statistics.median(v) * 1e3 for mix, v in samples.items()},
               **{f"{mix}_ratio": statistics.median(s / b for s, b in zip(samples[mix], samples["base"]))
                  for mix in mixes if mix != "base"}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def prefill_row(engine: Engine, args) -> dict:
    prompt = list(range(1000, 1000 + 511))
    samples = {"base": [], "one_adapter": []}
    for _ in range(args.repeats):
        for mix, lora in (("base", None), ("one_adapter", "a")):
            start = time.perf_counter()
            engine.generate([prompt], SamplingParams(max_tokens=1, lora=lora))
            samples[mix].append(time.perf_counter() - start)
    return {"prompt_tokens": len(prompt), **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in samples.items()},
            "ratio": statistics.median(a / b for a, b in zip(samples["one_adapter"], samples["base"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", default="results/lora_overhead_smollm2.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = Path(args.model) if Path(args.model).is_dir() else ensure_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = tuple((name, str(write_adapter(model, Path(tmp) / name, args.rank, seed)))
                         for seed, name in enumerate("ab"))
        engine = Engine(model, EngineConfig(kv_cache_bytes=1 << 30, max_num_seqs=64, enable_prefix_caching=False,
                                            lora_modules=adapters))
    out = {"command": {"script": "benchmarks/lora_overhead.py", **portable_args(vars(args))}, "model": model.name,
           "adapters": f"PEFT, rank {args.rank}, all 7 projections of all layers", "threads": args.threads,
           "decode": decode_rows(engine, args), "prefill": prefill_row(engine, args)}
    print(json.dumps(out, indent=2))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
