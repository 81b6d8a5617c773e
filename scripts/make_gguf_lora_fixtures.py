"""Writes the GGUF LoRA test fixtures under tests/data/lora/: for the tiny Llama and Qwen2 test models, a PEFT
adapter (written by PEFT) and its GGUF conversions (f32, f16) written by llama.cpp's own convert_lora_to_gguf.py, so
the tests judge the engine's GGUF reading by files nobody here wrote. Needs llama.cpp's source (benchmarks/llamacpp.py
downloads the PyPI sdist once, under .cache/); the tests only read the committed files.

    .venv/bin/python scripts/make_gguf_lora_fixtures.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import llamacpp  # noqa: E402

from splitserve.modelgen.cache import ensure_model  # noqa: E402
from tests.support.lora import write_peft_adapter  # noqa: E402

OUT = ROOT / "tests" / "data" / "lora"
# model preset -> (seed, alpha): alpha / r differs from 1 so a wrong scale shows
FIXTURES = {"tiny": (7, 12), "qwen2-tiny": (8, 6)}


def main() -> None:
    os.chdir(ROOT)
    converter = llamacpp.source_tree() / "convert_lora_to_gguf.py"
    for preset, (seed, alpha) in FIXTURES.items():
        model = ensure_model(preset).relative_to(ROOT)  # relative: the files name their base model, not this disk
        folder = OUT / preset
        shutil.rmtree(folder, ignore_errors=True)
        write_peft_adapter(model, folder / "peft", seed=seed, alpha=alpha)
        (folder / "peft" / "README.md").unlink()  # PEFT's model card template: nothing the tests read
        for outtype in ("f32", "f16"):
            subprocess.run([sys.executable, str(converter), "--base", str(model), "--outtype", outtype,
                            "--outfile", str(folder / f"adapter-{outtype}.gguf"), str(folder / "peft")], check=True)
        print(f"wrote {folder.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
