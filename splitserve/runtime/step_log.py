"""A node's engine steps, one JSON line each (`splitserve node --step-log PATH`).

    {"t": 1764771234.512, "s": 0.0183, "prompt": [[0, 512]], "decode": [268, 301]}

t: when the step started (Unix seconds); s: how long it took; prompt: [start, new tokens] of each
prompt chunk (start > 0: the chunk continues a context); decode: the context of each one-token
decode row. The shapes are what `splitserve profile` fits its step model on, so a log taken under
real load says how far a loaded node's steps are from the profile (and what happened between
them: the gaps). Each line is written when its step ends, so the log can be read while the node runs.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StepShape:
    prompt: list[tuple[int, int]] = field(default_factory=list)  # (start, new tokens) per prompt chunk
    decode: list[int] = field(default_factory=list)  # context after each decode row's token

    @classmethod
    def of(cls, plan) -> "StepShape":
        """The shape of a scheduler plan, read before the step runs (a chunk's start moves when it commits)."""
        shape = cls()
        for chunk in plan.chunks:
            if chunk.start >= chunk.request.num_prompt_tokens:
                shape.decode.append(chunk.start + chunk.num_new_tokens)
            else:
                shape.prompt.append((chunk.start, chunk.num_new_tokens))
        return shape


class StepLog:
    def __init__(self, path: str | Path):
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: readable while the node runs
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, node_id: str) -> "StepLog":
        """A log at `path`, or at <path>/<node_id>.jsonl when `path` is a folder (several nodes, one flag)."""
        path = Path(path)
        return cls(path / f"{node_id}.jsonl" if path.is_dir() else path)

    def write(self, started_unix: float, seconds: float, shape: StepShape) -> None:
        line = json.dumps({"t": round(started_unix, 6), "s": round(seconds, 6),
                           "prompt": [list(c) for c in shape.prompt], "decode": shape.decode}, separators=(",", ":"))
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_step_log(path: str | Path) -> list[dict]:
    """The lines of a step log (a torn last line, from a node killed mid-write, is skipped)."""
    steps = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            steps.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return steps
