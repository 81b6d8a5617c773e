"""The tokenizer training text shipped with the package (`corpus.txt.gz`, see CORPUS.md).

`extract_corpus` rebuilds it from the CacheBlend MuSiQue sample; `load_corpus` reads it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

CORPUS_PATH = Path(__file__).with_name("corpus.txt.gz")


def load_corpus(path: Path = CORPUS_PATH) -> list[str]:
    """One passage (or question with its answers) per line."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line]


def extract_corpus(musique_json: Path, out: Path = CORPUS_PATH) -> int:
    """Distinct passages in order of first use, then each question with its answers; bytes written.

    gzip with mtime 0 so the same input gives the same file.
    """
    lines = _passages(json.loads(Path(musique_json).read_text()))
    data = ("\n".join(line.replace("\n", " ").strip() for line in lines) + "\n").encode()
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(data)
    return len(data)


def _passages(questions: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for q in questions:
        for ctx in q["ctxs"]:
            seen.setdefault(ctx["text"], None)
    return list(seen) + [q["question"] + " " + " / ".join(q["answers"]) for q in questions]


if __name__ == "__main__":
    import sys

    print(extract_corpus(Path(sys.argv[1])), "bytes of text written to", CORPUS_PATH)
