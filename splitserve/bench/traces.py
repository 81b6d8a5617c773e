"""Readers for the workload data files (source, licence and transformation of each: data/README.md).

The folder is `$SPLITSERVE_TRACES_DIR`, by default the package's own `splitserve/bench/data`.
"""

from __future__ import annotations

import calendar
import csv
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

TRACES_ENV = "SPLITSERVE_TRACES_DIR"
AZURE_FILES = {"azure-code": "AzureLLMInferenceTrace_code.csv", "azure-conv": "AzureLLMInferenceTrace_conv.csv"}
LENGTH_FILES = {
    "sharegpt": "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
    "arxiv": "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
}
MUSIQUE_FILE = "cacheblend_musique_s.json"
MOONCAKE_BLOCK_TOKENS = 512
SHIPPED_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class TraceRow:
    """One request of a trace: arrival time (s, any origin), lengths, Mooncake block hashes."""

    time_s: float | None
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()


def traces_dir() -> Path:
    return Path(os.environ.get(TRACES_ENV) or SHIPPED_DIR)


def data_file(name: str, override: str | os.PathLike | None = None) -> Path:
    """Path of a data file; FileNotFoundError naming where it was looked for and how to fix it."""
    path = Path(override) if override else traces_dir() / name
    if not path.is_file():
        hint = "" if override else f" (set {TRACES_ENV} to the folder holding {name}; default {SHIPPED_DIR})"
        raise FileNotFoundError(f"workload data file not found: {path}{hint}")
    return path


def parse_azure_time(text: str) -> float:
    """'2023-11-16 18:15:46.6805900' (7 fractional digits; an optional +00:00 zone) -> epoch s (UTC)."""
    text = text.strip()
    base = datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S")
    frac = ""
    if len(text) > 19 and text[19] == ".":
        rest = text[20:]
        frac = rest[: len(rest) - len(rest.lstrip("0123456789"))]
    return calendar.timegm(base.timetuple()) + (float("0." + frac) if frac else 0.0)


def load_azure(path: Path) -> list[TraceRow]:
    with open(path, newline="") as f:
        return [
            TraceRow(parse_azure_time(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
            for r in csv.DictReader(f)
        ]


def load_lengths(path: Path) -> list[TraceRow]:
    """ShareGPT / arXiv statistics: (num_prefill_tokens, num_decode_tokens), no timestamps."""
    with open(path, newline="") as f:
        return [TraceRow(None, int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in csv.DictReader(f)]


def load_mooncake(path: Path) -> list[TraceRow]:
    """JSON lines `{"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}`."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                rows.append(TraceRow(float(d["timestamp"]) / 1000, int(d["input_length"]),
                                     int(d["output_length"]), tuple(int(h) for h in d["hash_ids"])))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: not a Mooncake trace line ({e!r})") from None
    return sorted(rows, key=lambda r: r.time_s)


def load_musique(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """CacheBlend MuSiQue sample -> [(question, (passage text, ...)), ...]."""
    items = json.loads(path.read_text())
    return [(item["question"], tuple(c["text"] for c in item["ctxs"])) for item in items]


def window(rows: list[TraceRow], start_s: float, end_s: float) -> list[TraceRow]:
    """Rows whose time since the trace's first row lies in [start_s, end_s)."""
    if not rows:
        return []
    t0 = rows[0].time_s
    return [r for r in rows if start_s <= r.time_s - t0 < end_s]
