"""GPU check (one prepared run on a lent H200): the `1b` preset in bf16 on CUDA.

1. Greedy output of the engine equals HF transformers on CUDA (same folder, bf16); where bf16
   rounding makes them part, each side's token must be in the other's top-5 at that step.
2. Prefill FLOP utilisation (vs the GPU's dense bf16 peak) and decode memory-bandwidth
   utilisation (weights + KV read per step vs peak bandwidth).
Writes benchmarks/results/engine_gpu.json. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "engine_gpu.json"
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}  # dense bf16 FLOP/s, bytes/s


def peaks(name: str) -> tuple[float, float]:
    return next((v for k, v in PEAKS.items() if k in name), (989e12, 4.8e12))


def cuda_time(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def compare_greedy(engine, hf, prompts, new_tokens: int) -> list[dict]:
    from splitserve.engine import SamplingParams

    ours = engine.generate(prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True, logprobs=5))
    rows = []
    for prompt, result in zip(prompts, ours):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                              attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device="cuda"))
        hf_ids = out.sequences[0, len(prompt):].tolist()
        diff = next((i for i, (a, b) in enumerate(zip(result.token_ids, hf_ids)) if a != b), None)
        ok = diff is None
        if diff is not None:
            hf_top = torch.topk(out.logits[diff][0].float(), 5).indices.tolist()
            ours_top = [t for t, _ in result.logprobs[diff][1]]
            ok = result.token_ids[diff] in hf_top and hf_ids[diff] in ours_top
        rows.append({"prompt_tokens": len(prompt), "identical": diff is None, "first_diff": diff, "within_top5": ok})
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; skipped (run it on a lent GPU machine)")
        return 0
    from transformers import AutoModelForCausalLM

    from splitserve.engine import Engine, EngineConfig, ModelConfig, SamplingParams
    from splitserve.modelgen.writer import make_model
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_throughput import prefill_flops

    name = torch.cuda.get_device_name()
    peak_flops, peak_bw = peaks(name)
    model_dir = make_model("1b", Path(tempfile.mkdtemp()) / "1b", seed=0, dtype="bfloat16")
    cfg = ModelConfig.from_dir(model_dir)
    engine = Engine(model_dir, EngineConfig(dtype="bfloat16", device="cuda", kv_cache_bytes=8 << 30,
                                            max_num_batched_tokens=8192, enable_prefix_caching=False))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda").eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 8000) for _ in range(n)] for n in (7, 64, 300, 1000)]
    greedy = compare_greedy(engine, hf, prompts, 32)

    long_prompt = [[rng.randrange(5, 8000) for _ in range(4096)]]
    run = lambda n: engine.generate(long_prompt, SamplingParams(max_tokens=n, ignore_eos=True))
    run(1)
    prefill_s = min(cuda_time(lambda: run(1)) for _ in range(3))
    decode_s = (cuda_time(lambda: run(65)) - prefill_s) / 64
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    kv_bytes = cfg.kv_bytes_per_token(torch.bfloat16) * (4096 + 32)
    report = {
        "device": name, "model": "1b preset (Llama-3.2-1B shape), bfloat16",
        "greedy_vs_hf": greedy,
        "prefill_4096_s": prefill_s, "prefill_flop_utilisation": prefill_flops(cfg, 4096) / prefill_s / peak_flops,
        "decode_step_s_batch1": decode_s, "decode_bandwidth_utilisation": (weight_bytes + kv_bytes) / decode_s / peak_bw,
        "peaks_assumed": {"bf16_flops": peak_flops, "bytes_per_s": peak_bw},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(r["within_top5"] for r in greedy) else 1


if __name__ == "__main__":
    sys.exit(main())
