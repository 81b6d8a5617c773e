"""GPU check (one prepared run on a lent GPU): the `1b` preset (Llama-3.2-1B shape) in bf16 on CUDA.

1. Greedy output of the engine equals HF transformers on CUDA (same folder, bf16); where bf16
   rounding makes them part, each side's token must be in the other's top-5 at that step.
2. Prefill FLOP utilisation (vs the GPU's dense bf16 peak) and decode memory-bandwidth
   utilisation (weights + KV read per step vs peak bandwidth).
3. Decode tokens/s of the engine and of HF `generate` at batch 1, 8, 32 and 64 (prompts of 128
   tokens, 32 new tokens, the prefill subtracted; medians of 3), and prefill time at 4,096 tokens
   (--long-prompt).
Writes benchmarks/results/engine_gpu.json (or --out). Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "engine_gpu.json"
DEVICE, DTYPE = "cuda", "bfloat16"  # a dry run on the CPU sets "cpu", "float32" (tests/unit/test_gpu_check.py)
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}  # dense bf16 FLOP/s, bytes/s


def peaks(name: str) -> tuple[float, float]:
    return next((v for k, v in PEAKS.items() if k in name), (989e12, 4.8e12))


def device_time(fn) -> float:
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


class CudaEngine:
    name = "splitserve"

    def __init__(self, model_dir: Path, kv_cache_bytes: int):
        from splitserve.engine import Engine, EngineConfig

        self.engine = Engine(model_dir, EngineConfig(dtype=DTYPE, device=DEVICE, kv_cache_bytes=kv_cache_bytes, max_num_seqs=64,
                                                     max_num_batched_tokens=8192, enable_prefix_caching=False))

    def run(self, prompts: list[list[int]], new_tokens: int, **extra):
        from splitserve.engine import SamplingParams

        return self.engine.generate(prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True, **extra))


class CudaHF:
    name = "hf-transformers"

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, DTYPE)).to(DEVICE).eval()

    def run(self, prompts: list[list[int]], new_tokens: int, **extra):
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=DEVICE)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=DEVICE)
        with torch.inference_mode():
            return self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                       do_sample=False, pad_token_id=0, **extra)


def compare_greedy(ours: CudaEngine, hf: CudaHF, prompts, new_tokens: int) -> list[dict]:
    rows = []
    for prompt, result in zip(prompts, ours.run(prompts, new_tokens, logprobs=5)):
        out = hf.run([prompt], new_tokens, output_logits=True, return_dict_in_generate=True)
        hf_ids = out.sequences[0, len(prompt):].tolist()
        diff = next((i for i, (a, b) in enumerate(zip(result.token_ids, hf_ids)) if a != b), None)
        ok = diff is None
        if diff is not None:
            hf_top = torch.topk(out.logits[diff][0].float(), 5).indices.tolist()
            ours_top = [t for t, _ in result.logprobs[diff][1]]
            ok = result.token_ids[diff] in hf_top and hf_ids[diff] in ours_top
        rows.append({"prompt_tokens": len(prompt), "identical": diff is None, "first_diff": diff, "within_top5": ok})
    return rows


def decode_rates(systems, vocab: int, batches=(1, 8, 32, 64), prompt_tokens: int = 128, new_tokens: int = 32,
                 repeats: int = 3) -> dict:
    """Decode tokens/s per system and batch, the prefill (and first token) subtracted; medians."""
    rng = random.Random(1)
    rates = {s.name: {} for s in systems}
    for batch in batches:
        prompts = [[rng.randrange(5, vocab) for _ in range(prompt_tokens)] for _ in range(batch)]
        for s in systems:
            samples = []
            for _ in range(repeats):
                first = device_time(lambda: s.run(prompts, 1))
                total = device_time(lambda: s.run(prompts, new_tokens + 1))
                samples.append(batch * new_tokens / max(total - first, 1e-9))
            rates[s.name][str(batch)] = statistics.median(samples)
    return rates


def decode_step_ms_by_context(ours: CudaEngine, vocab: int, contexts=(128, 1024, 4096), steps: int = 32) -> dict:
    """Batch-1 decode step time (ms) after prompts of each length, the prefill subtracted (min of 2)."""
    rng = random.Random(2)
    out = {}
    for n in contexts:
        prompt = [[rng.randrange(5, vocab) for _ in range(n)]]
        first = min(device_time(lambda: ours.run(prompt, 1)) for _ in range(2))
        total = min(device_time(lambda: ours.run(prompt, steps + 1)) for _ in range(2))
        out[str(n)] = 1000 * (total - first) / steps
    return out


def decode_profile(ours: CudaEngine, vocab: int, context: int, steps: int = 8) -> str:
    """torch.profiler's table (top ops by self device time) over `steps` batch-1 decode steps."""
    from torch.profiler import ProfilerActivity, profile

    prompt = [[random.Random(3).randrange(5, vocab) for _ in range(context)]]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        ours.run(prompt, steps + 1)
    key = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a 1b-preset folder (default: made in a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--long-prompt", type=int, default=4096, help="prompt tokens for the prefill and bandwidth figures")
    parser.add_argument("--kv-cache-gib", type=float, default=8.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; skipped (run it on a lent GPU machine)")
        return 0
    from splitserve.engine import ModelConfig
    from splitserve.modelgen.writer import make_model
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_throughput import prefill_flops

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    peak_flops, peak_bw = peaks(name)
    model_dir = args.model or make_model("1b", Path(tempfile.mkdtemp()) / "1b", seed=0, dtype="bfloat16")
    cfg = ModelConfig.from_dir(model_dir)
    ours, hf = CudaEngine(model_dir, int(args.kv_cache_gib * (1 << 30))), CudaHF(model_dir)
    vocab = min(8000, cfg.vocab_size)
    rng = random.Random(0)
    prompts = [[rng.randrange(5, vocab) for _ in range(n)] for n in (7, 64, 300, 1000)]
    report = {"device": name, "torch": torch.__version__, "model": "1b preset (Llama-3.2-1B shape, random weights), bfloat16"}
    report["greedy_vs_hf"] = compare_greedy(ours, hf, prompts, 32)
    _write(args.out, report)

    long_prompt = [[rng.randrange(5, vocab) for _ in range(args.long_prompt)]]
    ours.run(long_prompt, 1)
    prefill_s = min(device_time(lambda: ours.run(long_prompt, 1)) for _ in range(3))
    decode_s = (device_time(lambda: ours.run(long_prompt, 65)) - prefill_s) / 64
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.engine.model.parameters())
    kv_bytes = cfg.kv_bytes_per_token(getattr(torch, DTYPE)) * (args.long_prompt + 32)
    report.update({
        "long_prompt_tokens": args.long_prompt, "prefill_long_s": prefill_s,
        "prefill_flop_utilisation": prefill_flops(cfg, args.long_prompt) / prefill_s / peak_flops,
        "decode_step_s_batch1_long": decode_s, "decode_bandwidth_utilisation": (weight_bytes + kv_bytes) / decode_s / peak_bw,
        "peaks_assumed": {"bf16_flops": peak_flops, "bytes_per_s": peak_bw},
    })
    _write(args.out, report)
    hf.run(long_prompt, 2)
    report["hf_prefill_long_s"] = min(device_time(lambda: hf.run(long_prompt, 1)) for _ in range(3))
    report["decode_tok_s"] = decode_rates([ours, hf], vocab, args.batches)
    _write(args.out, report)
    report["decode_step_ms_by_context"] = decode_step_ms_by_context(ours, vocab, (128, 1024, args.long_prompt))
    _write(args.out, report)
    print(decode_profile(ours, vocab, args.long_prompt))
    print(json.dumps(report, indent=2))
    return 0 if all(r["within_top5"] for r in report["greedy_vs_hf"]) else 1


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
