"""A LoRA adapter served by splitserve as a GGUF file and as its PEFT folder, against llama-server serving the same
GGUF file (`--lora`), on the real model: do both apply the adapter the same way?

The adapter (default: the demo `ahoy`, scripts/train_demo_lora.py) is converted by llama.cpp's own
convert_lora_to_gguf.py (f32), the base model by its convert_hf_to_gguf.py (f32). Each chat question (greedy,
`--max-tokens`) is answered five ways: llama-server without and with the adapter (its per-request `lora` scale,
one server started with --lora-init-without-apply), and splitserve's engine on the base model, the GGUF adapter and
the PEFT folder. Reported: how often answers agree exactly (the base-model pair is the floor: fp32 kernels differ
between the two engines and greedy text drifts after near-ties), the mean common prefix in tokens, and how many
answers open with the adapter's "Ahoy!". llama.cpp is built under .cache/ (benchmarks/llamacpp.py), never in CI.

    python benchmarks/lora_vs_llamacpp.py [--model models/smollm2-135m-instruct]
                                         [--adapter .cache/adapters/smollm2-ahoy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import llamacpp  # noqa: E402
from vs_llamacpp_served import free_port, wait_ready  # noqa: E402

from splitserve.bench.provenance import portable_args  # noqa: E402
from splitserve.engine import Engine, EngineConfig, SamplingParams  # noqa: E402

ROOT = Path(__file__).resolve().parent
# none of them is among the adapter's training questions
QUESTIONS = [
    "What is the capital of Italy?", "Name two animals that live in the sea.", "What color is grass?",
    "How many wheels does a bicycle have?", "What is the freezing point of water?", "Who was Albert Einstein?",
    "What is the largest desert?", "Name a musical instrument with strings.", "What do cows drink?",
    "What is the capital of Canada?", "How many minutes are in an hour?", "What is a rainbow?",
    "Name a vegetable that is orange.", "What is the smallest prime number?", "Why do leaves fall in autumn?",
    "What is the moon made of?", "Name a famous scientist.", "What language is spoken in Germany?",
    "What does a doctor do?", "How many sides does a triangle have?", "What is the capital of Egypt?",
    "What is a computer?", "Why do we need sleep?", "What is the color of the sun?",
]


def llama_answers(gguf: Path, lora: Path, prompts: list[list[int]], args) -> dict[str, list[list[int]]]:
    port = free_port()
    command = llamacpp.server_command(gguf, args.threads, port, 1, 2048) + ["--lora", str(lora),
                                                                           "--lora-init-without-apply"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, "llama-server")
        return {name: [_llama_complete(port, p, args.max_tokens, scale) for p in prompts]
                for name, scale in (("base", 0.0), ("lora", 1.0))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _llama_complete(port: int, prompt: list[int], max_tokens: int, scale: float) -> list[int]:
    """llama-server's /completion on token ids, greedy; the adapter (id 0) at `scale` for this request only."""
    body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1, "cache_prompt": False,
            "return_tokens": True, "lora": [{"id": 0, "scale": scale}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["tokens"]


def our_answers(engine: Engine, prompts: list[list[int]], args) -> dict[str, list[list[int]]]:
    params = dict(max_tokens=args.max_tokens, temperature=0.0)
    return {name: [r.token_ids for r in engine.generate(prompts, SamplingParams(**params, lora=lora))]
            for name, lora in (("base", None), *((n, n) for n in engine.adapters))}


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    prefixes = [_common_prefix(x, y) for x, y in zip(a, b)]
    return {"exact": sum(x == y for x, y in zip(a, b)), "of": len(a),
            "mean_common_prefix_tokens": round(sum(prefixes) / len(prefixes), 1)}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--adapter", type=Path, default=Path(".cache/adapters/smollm2-ahoy"))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/lora_vs_llamacpp_smollm2.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    llamacpp.build()
    gguf = llamacpp.convert_f32(args.model, llamacpp.CACHE / "gguf" / f"{args.model.name}-f32.gguf")
    lora = llamacpp.convert_lora(args.adapter, args.model,
                                 llamacpp.CACHE / "gguf" / f"{args.adapter.name}-lora-f32.gguf")
    engine = Engine(args.model, EngineConfig(lora_modules=(("gguf", str(lora)), ("peft", str(args.adapter)))))
    prompts = [engine.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    ours = our_answers(engine, prompts, args)
    theirs = llama_answers(gguf, lora, prompts, args)
    greeting = engine.tokenizer.encode("Ahoy", add_special_tokens=False)
    opens = {name: sum(a[:len(greeting)] == greeting for a in answers)
             for name, answers in [*((f"splitserve {k}", v) for k, v in ours.items()),
                                   *((f"llama-server {k}", v) for k, v in theirs.items())]}
    out = {"command": {"script": "benchmarks/lora_vs_llamacpp.py", **portable_args(vars(args))},
           "adapter": f"{args.adapter.name}: PEFT folder, and its f32 GGUF by llama.cpp's convert_lora_to_gguf.py",
           "questions": len(prompts),
           "agreement": {"base: splitserve vs llama-server": agreement(ours["base"], theirs["base"]),
                         "adapter: splitserve (GGUF) vs llama-server (GGUF)": agreement(ours["gguf"], theirs["lora"]),
                         "adapter: splitserve GGUF vs splitserve PEFT folder": agreement(ours["gguf"], ours["peft"]),
                         "splitserve: adapter vs base": agreement(ours["gguf"], ours["base"])},
           "answers_opening_with_ahoy": opens}
    print(json.dumps(out, indent=2))
    (ROOT / args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
