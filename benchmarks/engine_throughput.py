"""Engine vs HF transformers on the same model folder, side by side in one run (CPU, fp32).

Measures prefill time for 512 tokens and decode tokens/s at batch 1, 8 and 32 (HF: padded
batches of the same prompts), the machine's fp32 matmul GFLOP/s and the engine's prefill
FLOP utilisation. Each measurement alternates engine and HF and reports medians.

    python benchmarks/engine_throughput.py [--model DIR] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from splitserve.bench.provenance import model_id, portable_args
from splitserve.engine import Engine, EngineConfig, ModelConfig, SamplingParams

RESULTS = Path(__file__).parent / "results" / "engine_cpu.json"


def matmul_gflops(n: int = 1024, iters: int = 10, trials: int = 7) -> float:
    """The best of several trials: on a shared machine the peak is what the hardware gives."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * iters / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Ours:
    name = "splitserve"

    def __init__(self, model_dir: Path, quant_cpu_linear: bool = True, name: str = "splitserve"):
        self.name = name
        self.engine = Engine(model_dir, EngineConfig(kv_cache_bytes=1 << 30, max_num_batched_tokens=8192, max_num_seqs=64,
                                                     enable_prefix_caching=False, quant_cpu_linear=quant_cpu_linear))

    def run(self, prompts: list[list[int]], new_tokens: int) -> None:
        self.engine.generate(prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True))


class HF:
    name = "hf-transformers"

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(self, prompts: list[list[int]], new_tokens: int) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                do_sample=False, pad_token_id=0)


def decode_tokens_per_s(system, prompts, new_tokens: int) -> float:
    """Decode rate with the prefill (and first token) subtracted."""
    first = timed(lambda: system.run(prompts, 1))
    total = timed(lambda: system.run(prompts, new_tokens + 1))
    return len(prompts) * new_tokens / max(total - first, 1e-9)


def prefill_flops(cfg: ModelConfig, n: int) -> float:
    per_layer = 2 * cfg.hidden_size * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    per_layer += 2 * cfg.num_heads * cfg.head_dim * cfg.hidden_size + 2 * 3 * cfg.hidden_size * cfg.intermediate_size
    attention = 2 * 2 * cfg.num_heads * cfg.head_dim * n * (n + 1) / 2  # QK^T and PV, causal
    return cfg.num_layers * (per_layer * n + attention) + 2 * cfg.hidden_size * cfg.vocab_size


def measure(systems, args, vocab: int) -> dict:
    rng = random.Random(0)
    prompt512 = [[rng.randrange(5, vocab) for _ in range(args.prefill_tokens)]]
    results = {s.name: {"prefill_s": [], "decode_tok_s": {b: [] for b in args.batches}} for s in systems}
    for s in systems:  # warm-up
        s.run(prompt512, 2)
    for _ in range(args.repeats):
        for s in systems:
            results[s.name]["prefill_s"].append(timed(lambda: s.run(prompt512, 1)))
        for batch in args.batches:
            prompts = [[rng.randrange(5, vocab) for _ in range(args.decode_prompt_tokens)] for _ in range(batch)]
            for s in systems:
                results[s.name]["decode_tok_s"][batch].append(decode_tokens_per_s(s, prompts, args.decode_tokens))
    return {name: {"prefill_s": statistics.median(r["prefill_s"]),
                   "decode_tok_s": {str(b): statistics.median(v) for b, v in r["decode_tok_s"].items()}}
            for name, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the `small` preset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-prompt-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from splitserve.modelgen.cache import ensure_model

        args.model = ensure_model("small")
    cfg = ModelConfig.from_dir(args.model)
    gflops = matmul_gflops()
    systems = [Ours(args.model), HF(args.model)]
    medians = measure(systems, args, min(cfg.vocab_size, systems[0].engine.tokenizer.vocab_size))
    ours, hf = medians["splitserve"], medians["hf-transformers"]
    utilisation = prefill_flops(cfg, args.prefill_tokens) / ours["prefill_s"] / (gflops * 1e9)
    report = {
        "benchmark": "engine_throughput", "model": model_id(args.model), "dtype": "float32", "threads": args.threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
                    "fp32_matmul_gflops": round(gflops, 1)},
        "config": portable_args(vars(args)),
        "method": "medians over repeats; engine and HF alternate within each repeat; decode rate = "
                  "batch * decode_tokens / (time(decode_tokens + 1) - time(1))",
        "results": medians,
        "ratios": {"prefill_speedup": hf["prefill_s"] / ours["prefill_s"],
                   **{f"decode_speedup_b{b}": ours["decode_tok_s"][b] / hf["decode_tok_s"][b] for b in ours["decode_tok_s"]}},
        "engine_prefill_flop_utilisation": utilisation,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    ours, hf = report["results"]["splitserve"], report["results"]["hf-transformers"]
    print(f"fp32 matmul: {report['machine']['fp32_matmul_gflops']:.0f} GFLOP/s, threads {report['threads']}")
    print(f"{'':28}{'splitserve':>12}{'HF':>12}{'ratio':>8}")
    print(f"{'prefill 512 tokens (s)':28}{ours['prefill_s']:12.3f}{hf['prefill_s']:12.3f}"
          f"{report['ratios']['prefill_speedup']:8.2f}")
    for b in ours["decode_tok_s"]:
        print(f"{'decode tok/s, batch ' + b:28}{ours['decode_tok_s'][b]:12.1f}{hf['decode_tok_s'][b]:12.1f}"
              f"{report['ratios'][f'decode_speedup_b{b}']:8.2f}")
    print(f"engine prefill FLOP utilisation: {report['engine_prefill_flop_utilisation']:.1%}")


if __name__ == "__main__":
    main()
