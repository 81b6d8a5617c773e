"""What travels with the layers: request hash, fixed-size header messages, checksums, chunking.

The torch backend sends header messages and payloads on two tags. One header message lists
up to MAX_ENTRIES entries; the payloads of its LAYER entries follow on the payload tag, in
entry order, each as ceil(nbytes / CHUNK_BYTES) messages of CHUNK_BYTES (last shorter):

    header:  int64[HEADER_WORDS] = [MAGIC, num_entries, entry 0 (ENTRY_WORDS), entry 1, ..., zeros]
    entry:   [kind, request_hash, layer, num_tokens, nbytes, checksum, checksum_kind]

- LAYER: a payload of `nbytes` follows; `checksum_kind` announces the algorithm whose value
  comes later in a CHECKSUM entry (torch: hashed while the payload is on the wire) or, on the
  gRPC backend, on the layer's last chunk;
- JOINED: a LAYER whose payload continues the message of the entry before it (since v5): a
  LAYER entry and the JOINED entries right after it travel as one payload of their summed
  bytes (chunked as above), sent from one buffer with no copy when the sender's layers lie
  back to back in memory (`joined_layers`); fewer, larger messages cost gloo less per byte;
- CHECKSUM: the value for an announced layer (`checksum`, signed int64 bits of the hash);
- ABORT: the sender gave up on the request; no payload follows.

So a sender that has several layers queued sends one header for all of them, and the receiver
posts every payload's receive at once, then acks the header (gloo; since v3): the sender posts the
payloads only after the ack, so they never wait on a receive posted late. v4 carries up to
MAX_FLIGHT_LAYERS layers a header (30-layer models: one ack per request, not four). `nbytes` decides the receiver's message sizes, so
entries and payloads must come from the same sender call; gloo aborts the process on a size
mismatch, so the pair group is a channel between trusted peers, not a defence against hostile
ones.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from array import array
from dataclasses import dataclass

import torch

from splitserve.kvtransfer.base import TransferMeta
from splitserve.kvtransfer.checksum import ChecksumKind, layer_seed

MAGIC = 0x5353_4B56_0005  # "SSKV" v5 (v4 had no JOINED entries, v3 headers held 16: they do not talk to each other)
MAX_ENTRIES = 64
MAX_FLIGHT_LAYERS = MAX_ENTRIES // 2  # LAYER entries in one header: the other half is for CHECKSUM entries owed
ENTRY_WORDS = 7
HEADER_WORDS = 2 + MAX_ENTRIES * ENTRY_WORDS
CHUNK_BYTES = 8 << 20
JOIN_BYTES = 2 << 20  # layers lying back to back are joined into messages of about this size (at least one layer)


_ZEROS = array("q", bytes(8 * HEADER_WORDS))


class Kind(enum.IntEnum):
    LAYER = 1
    ABORT = 2  # sender gave up on the request; no payload follows
    CHECKSUM = 3  # the checksum of a layer announced earlier
    JOINED = 4  # a LAYER whose payload continues the previous entry's message


@functools.lru_cache(maxsize=1024)
def request_hash(request_id: str) -> int:
    """63-bit stable hash of a request id (fits an int64 header word)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def checksum_seed(request_id: str, layer: int) -> int:
    """The seed of a layer's checksum: binds it to its request and position."""
    return layer_seed(request_hash(request_id), layer)


def as_bytes(kv: torch.Tensor) -> torch.Tensor:
    """Flat uint8 view of a contiguous tensor (no copy)."""
    return kv.reshape(-1).view(torch.uint8)


def joined_layers(meta: TransferMeta, device: str | torch.device = "cpu",
                  join_bytes: int = JOIN_BYTES) -> list[torch.Tensor]:
    """Empty layer tensors for `meta` ([2, tokens, kv_heads, head_dim] each), allocated in groups of
    consecutive layers lying back to back, about `join_bytes` a group: filled and sent in order,
    each group leaves as one message."""
    per_group = max(1, join_bytes // max(1, meta.layer_nbytes))
    layers: list[torch.Tensor] = []
    for first in range(0, meta.num_layers, per_group):
        count = min(per_group, meta.num_layers - first)
        layers += torch.empty((count, *meta.layer_shape), dtype=meta.torch_dtype, device=device).unbind(0)
    return layers


def adjacent(before: torch.Tensor, after: torch.Tensor) -> bool:
    """`after` starts where `before` ends, in the same storage (both contiguous)."""
    return (before.device == after.device and before.untyped_storage().data_ptr() == after.untyped_storage().data_ptr()
            and before.data_ptr() + before.nbytes == after.data_ptr())


def span_bytes(first: torch.Tensor, nbytes: int) -> torch.Tensor:
    """uint8 [nbytes] over the storage of `first`, from its first byte (no copy)."""
    flat = as_bytes(first)
    return flat.new_empty(0).set_(flat.untyped_storage(), flat.storage_offset(), (nbytes,), (1,))


def chunk_ranges(nbytes: int, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk_bytes, nbytes)) for lo in range(0, nbytes, chunk_bytes)]


def check_layer_tensor(meta: TransferMeta, layer: int, kv: torch.Tensor) -> None:
    """ValueError unless `kv` is layer `layer` of `meta`: [2, tokens, kv_heads, head_dim], contiguous."""
    if not 0 <= layer < meta.num_layers:
        raise ValueError(f"layer {layer} out of range [0, {meta.num_layers})")
    if tuple(kv.shape) != meta.layer_shape or kv.dtype != meta.torch_dtype:
        raise ValueError(f"kv must be {meta.layer_shape} {meta.dtype}, got {tuple(kv.shape)} {kv.dtype}")
    if not kv.is_contiguous():
        raise ValueError("kv must be contiguous")


@dataclass(frozen=True)
class LayerHeader:
    """One entry of a header message (see the module docstring)."""

    kind: Kind
    request_hash: int
    layer: int = 0
    num_tokens: int = 0
    nbytes: int = 0
    checksum: int = 0
    checksum_kind: ChecksumKind = ChecksumKind.NONE

    @classmethod
    def for_layer(cls, meta: TransferMeta, layer: int, checksum_kind: ChecksumKind = ChecksumKind.NONE,
                  checksum: int = 0, kind: Kind = Kind.LAYER) -> LayerHeader:
        return cls(kind, request_hash(meta.request_id), layer, meta.num_tokens, meta.layer_nbytes, checksum,
                   checksum_kind)

    @property
    def has_payload(self) -> bool:
        """LAYER or JOINED: a payload of `nbytes` follows."""
        return self.kind is Kind.LAYER or self.kind is Kind.JOINED

    def words(self) -> list[int]:
        return [int(self.kind), self.request_hash, self.layer, self.num_tokens, self.nbytes, self.checksum,
                int(self.checksum_kind)]

    def encode(self) -> torch.Tensor:
        """A header message holding this entry alone."""
        return encode_entries([self])

    @classmethod
    def from_words(cls, values: list[int]) -> LayerHeader:
        """ValueError on an entry that is not well formed."""
        kind, checksum_kind = Kind._value2member_map_.get(values[0]), ChecksumKind._value2member_map_.get(values[6])
        if kind is None:
            raise ValueError(f"unknown header kind {values[0]}")
        if min(values[1:5]) < 0:
            raise ValueError("negative field in KV header")
        if checksum_kind is None:
            raise ValueError(f"unknown checksum kind {values[6]}")
        return cls(kind, *values[1:6], checksum_kind)

    def mismatch(self, meta: TransferMeta, next_layer: int) -> str:
        """Why this LAYER entry does not fit the reservation `meta` ("" if it does)."""
        if self.layer != next_layer:
            return f"layer {self.layer} arrived, expected layer {next_layer}"
        if self.num_tokens != meta.num_tokens or self.nbytes != meta.layer_nbytes:
            return (f"layer {self.layer} has {self.num_tokens} tokens / {self.nbytes} bytes, "
                    f"reservation has {meta.num_tokens} tokens / {meta.layer_nbytes} bytes")
        if meta.checksum and self.checksum_kind is ChecksumKind.NONE:
            return f"layer {self.layer} carries no checksum"
        return ""


def layer_words(meta: TransferMeta, layer: int, checksum_kind: ChecksumKind, kind: Kind = Kind.LAYER) -> list[int]:
    """`LayerHeader.for_layer(meta, layer, checksum_kind, kind=kind).words()` without the object
    (a sender encodes dozens a flight)."""
    return [int(kind), request_hash(meta.request_id), layer, meta.num_tokens, meta.layer_nbytes, 0,
            int(checksum_kind)]


def checksum_words(request_id: str, layer: int, checksum: int, checksum_kind: ChecksumKind) -> list[int]:
    """`LayerHeader(Kind.CHECKSUM, request_hash(request_id), layer, checksum=..., checksum_kind=...).words()`
    without the object."""
    return [int(Kind.CHECKSUM), request_hash(request_id), layer, 0, 0, checksum, int(checksum_kind)]


def encode_entries(entries: list[LayerHeader]) -> torch.Tensor:
    """int64[HEADER_WORDS]: one header message with 1..MAX_ENTRIES entries."""
    return encode_words([entry.words() for entry in entries])


def encode_words(entries: list[list[int]]) -> torch.Tensor:
    """`encode_entries` of entries given as their words (an array, not a list of Python ints, is what
    torch copies fast: a 30-layer flight's header in 42 instead of 97 us, in-process medians)."""
    if not 0 < len(entries) <= MAX_ENTRIES:
        raise ValueError(f"a header holds 1 to {MAX_ENTRIES} entries, got {len(entries)}")
    words = array("q", [MAGIC, len(entries)])
    for entry in entries:
        words.extend(entry)
    words.extend(_ZEROS[: HEADER_WORDS - len(words)])
    return torch.frombuffer(words, dtype=torch.int64)  # keeps `words` alive


def decode_entries(words: torch.Tensor) -> list[LayerHeader]:
    """The entries of a header message; ValueError on anything that is not a well-formed v3 header."""
    values = words.tolist()
    if len(values) != HEADER_WORDS or values[0] != MAGIC:
        raise ValueError("not a splitserve KV header (bad magic)")
    if not 0 < values[1] <= MAX_ENTRIES:
        raise ValueError(f"KV header with {values[1]} entries")
    return [LayerHeader.from_words(values[2 + i * ENTRY_WORDS: 2 + (i + 1) * ENTRY_WORDS]) for i in range(values[1])]
