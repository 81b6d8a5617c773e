"""A chunk-cache variant: one chunk's KV computed under one context, and its attention statistics.

Cache-Craft keeps up to M variants of a chunk, computed after different preceding chunks, and
picks per request the one that needs the least recompute. The metadata is small JSON (never
pickle), stored apart from the KV so that planning reads no tensor bytes:

    {"v": 1, "chunk": hex, "prefix_hash": hex, "start": int, "num_tokens": int, "num_bytes": int,
     "prefix_keys": [hex, ...], "prefix_lengths": [int, ...], "inter": [float, ...],
     "intra": float, "token_inter": [float, ...]}

`inter[j]` is the attention mass (head- and layer-averaged) from the chunk's tokens to the j-th
preceding chunk, `intra` the mass inside the chunk, `token_inter[k]` token k's mass on all
preceding chunks (Cache-Craft eq. 3, 4 and the per-token score of eq. 14).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from splitserve.chunkcache.format import CorruptValue

META_VERSION = 1


@dataclass(frozen=True)
class ChunkStats:
    prefix_keys: tuple[str, ...] = ()
    prefix_lengths: tuple[int, ...] = ()
    inter: tuple[float, ...] = ()
    intra: float = 0.0
    token_inter: tuple[float, ...] = ()

    def __post_init__(self):
        if not len(self.prefix_keys) == len(self.prefix_lengths) == len(self.inter):
            raise ValueError("prefix_keys, prefix_lengths and inter must have one entry per preceding chunk")
        if any(n < 0 for n in self.prefix_lengths):
            raise ValueError(f"prefix_lengths must be >= 0, got {self.prefix_lengths}")


@dataclass(frozen=True)
class VariantMeta:
    chunk: str  # content hash of the chunk's tokens
    prefix_hash: str  # hash of all tokens before the chunk when it was computed
    start: int  # position of the chunk's first token then
    num_tokens: int
    num_bytes: int = 0
    stats: ChunkStats = field(default_factory=ChunkStats)

    def __post_init__(self):
        if self.num_tokens < 1 or self.start < 0 or self.num_bytes < 0:
            raise ValueError(f"need num_tokens >= 1, start >= 0 and num_bytes >= 0, got {self.num_tokens}, "
                             f"{self.start} and {self.num_bytes}")

    @property
    def variant_id(self) -> str:
        return hashlib.blake2b(f"{self.start}:{self.prefix_hash}".encode(), digest_size=8).hexdigest()

    def to_json(self) -> bytes:
        body = {"v": META_VERSION, **{k: v for k, v in asdict(self).items() if k != "stats"}, **asdict(self.stats)}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "VariantMeta":
        try:
            body = json.loads(raw)
            if body.pop("v") != META_VERSION:
                raise CorruptValue("unknown metadata version")
            stats = ChunkStats(tuple(body.pop("prefix_keys")), tuple(int(x) for x in body.pop("prefix_lengths")),
                               tuple(float(x) for x in body.pop("inter")), float(body.pop("intra")),
                               tuple(float(x) for x in body.pop("token_inter")))
            meta = cls(str(body["chunk"]), str(body["prefix_hash"]), int(body["start"]), int(body["num_tokens"]),
                       int(body["num_bytes"]), stats)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise CorruptValue(f"bad chunk metadata: {exc}") from exc
        if stats.token_inter and len(stats.token_inter) != meta.num_tokens:
            raise CorruptValue("token_inter length differs from num_tokens")
        return meta
