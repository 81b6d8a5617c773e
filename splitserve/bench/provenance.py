"""Names for what a result was measured on that mean the same on every machine.

A model folder is named by its folder name plus a hash of its files' names and bytes
(`small-s0-v1 sha256:0123456789abcdef`), never by the path it had on the machine that ran the
benchmark; other paths are written relative to the repository, or by their file name.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HASH_HEX_DIGITS = 16
_READ_BYTES = 1 << 20


def content_hash(path: str | os.PathLike) -> str:
    """sha256 over a folder's regular files (relative name, size, bytes) in name order, or a file's."""
    root = Path(path).resolve()
    if root.is_file():
        return _hash_files(root.parent, ((root.name, root.stat().st_size, root.stat().st_mtime_ns),))
    files = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in sorted(root.rglob("*")) if p.is_file())
    return _hash_files(root, files)


@functools.lru_cache(maxsize=32)
def _hash_files(root: Path, files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, _ in files:
        digest.update(f"{name}\0{size}\0".encode())
        with open(root / name, "rb") as f:
            while block := f.read(_READ_BYTES):
                digest.update(block)
    return digest.hexdigest()[:HASH_HEX_DIGITS]


def model_id(model: str | os.PathLike) -> str:
    """'NAME sha256:HASH' for a model folder or file (GGUF); anything else (a hub-style name) unchanged."""
    path = Path(model)
    if not path.exists():
        return str(model)
    return f"{path.resolve().name} sha256:{content_hash(path)}"


def portable(value):
    """A value safe to publish: model folders as model_id, other absolute paths on this machine
    relative to the repository (or their file name outside it); everything else unchanged."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not os.path.isabs(value) or not os.path.exists(os.path.dirname(value)):
        return value  # not a path on this machine (e.g. a URL path such as /v1/completions)
    path = Path(value)
    if (path / "config.json").is_file() or path.suffix == ".gguf":
        return model_id(path)
    resolved = path.resolve()
    if resolved.is_relative_to(REPO_ROOT):
        return resolved.relative_to(REPO_ROOT).as_posix()
    return path.name


def portable_args(args: dict) -> dict:
    """`portable` applied to each value of a flat settings dict (e.g. `vars(argparse_args)`)."""
    return {key: portable(value) for key, value in args.items()}
