"""Chunk keys: hash(model fingerprint, the chunk's token ids), so a passage hits at any position.

The content hash (token ids only) is what the router can compute without the model's weights;
the storage key adds the model fingerprint and the KV dtype.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

KEY_PREFIX = "ss:cc:v1"
_FINGERPRINT_SAMPLE_BYTES = 1 << 16


def content_hash(token_ids) -> str:
    """32 hex chars: blake2b-128 of the token ids as little-endian uint32."""
    data = np.asarray(list(token_ids), dtype="<u4").tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def salted_key(key: str, salt: str | None) -> str:
    """A chunk's key under a cache salt (SamplingParams.cache_salt): the chunk cache holds one tenant's variants
    apart from everyone else's; no salt: the shared key."""
    if not salt:
        return key
    return hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=16).hexdigest()


def prefix_hash(token_ids) -> str:
    """Hash of everything before a chunk: equal hashes mean the chunk's KV was computed in the same context."""
    return content_hash(token_ids)


def model_fingerprint(model_dir: str | Path) -> bytes:
    """16 bytes from config.json and each weight file's name, size, head and tail (cheap for big models);
    a GGUF file (its metadata is in its head) by its own name, size, head and tail."""
    model_dir = Path(model_dir)
    h = hashlib.blake2b(digest_size=16)
    if not model_dir.is_file():
        h.update((model_dir / "config.json").read_bytes())
    for path in [model_dir] if model_dir.is_file() else sorted(model_dir.glob("*.safetensors")):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            h.update(f.read(_FINGERPRINT_SAMPLE_BYTES))
            f.seek(max(0, size - _FINGERPRINT_SAMPLE_BYTES))
            h.update(f.read())
    return h.digest()


def storage_key(fingerprint: bytes, dtype: str, chunk_hash: str) -> str:
    return f"{KEY_PREFIX}:{fingerprint.hex()}:{dtype}:{chunk_hash}"
