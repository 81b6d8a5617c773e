"""The Node service's calls as plain dataclasses.

The node servicers (prefill_node/servicer.py, decode_node/servicer.py) convert protobuf to and
from these; the workers take and return them. The router's node client (router/cluster/node_client.py)
returns them to the orchestrator. Nothing here imports gRPC or protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_TAG, MAX_TAG = 16, (1 << 31) - 1  # KV receives' tags a decode node hands out (gloo tags are ints)
Logprob = tuple[float, list[tuple[int, float]]]  # (logprob of the token, [(token id, logprob)] of the top k)


@dataclass(frozen=True)
class PostedRecvs:
    """Receives a decode node posted for a request's first KV messages when it reserved it (torch
    backend on gloo), on a tag of their own: `num_messages` messages of `layers_per_message`
    consecutive layers (the last of all may hold fewer), of a transfer of `num_layers` layers of
    `layer_bytes` each; each receive holds `message_bytes`. The prefill node uses the tag only for
    a transfer of exactly that layout (`fits`), and sends those messages exactly (`messages`)."""

    tag: int
    num_layers: int
    layer_bytes: int
    layers_per_message: int
    num_messages: int

    def __post_init__(self) -> None:
        if not FIRST_TAG <= self.tag <= MAX_TAG:
            raise ValueError(f"the tag of receives posted ahead must be in [{FIRST_TAG}, {MAX_TAG}], got {self.tag}")
        if min(self.num_layers, self.layer_bytes) < 1 or not 1 <= self.layers_per_message <= self.num_layers:
            raise ValueError(f"receives posted ahead for {self.num_layers} layers of {self.layer_bytes} bytes, "
                             f"{self.layers_per_message} a message: not a layout")
        if not 1 <= self.num_messages <= -(-self.num_layers // self.layers_per_message):
            raise ValueError(f"{self.num_messages} messages posted ahead for {self.num_layers} layers "
                             f"({self.layers_per_message} a message)")

    @property
    def message_bytes(self) -> int:
        return self.layers_per_message * self.layer_bytes

    def fits(self, num_layers: int, layer_bytes: int) -> bool:
        """They were posted for a transfer of this layout."""
        return (num_layers, layer_bytes) == (self.num_layers, self.layer_bytes)

    def messages(self) -> list[tuple[int, int]]:
        """[first, end) layers of each message posted ahead, in order."""
        return [self.message_of(first) for first in range(0, self.num_messages * self.layers_per_message,
                                                          self.layers_per_message)]

    def message_of(self, layer: int) -> tuple[int, int] | None:
        """[first, end) of the message posted ahead that `layer` travels in; None past them."""
        if layer >= self.num_messages * self.layers_per_message:
            return None
        first = layer - layer % self.layers_per_message
        return first, min(first + self.layers_per_message, self.num_layers)


@dataclass(frozen=True)
class KVTarget:
    """Where a request's KV goes: the decode node that reserved blocks for it."""

    node_id: str
    kv_address: str
    transport: str
    posted: PostedRecvs | None = None  # receives posted ahead for this request (from Reserve)


@dataclass(frozen=True)
class Reservation:
    """A decode node's answer to Reserve: KV blocks are held for the request until its Decode (or expiry)."""

    target: KVTarget
    num_blocks: int


@dataclass(frozen=True)
class PrefillResult:
    """A prefill node's answer to Prefill: the first token; the KV is on the decode node unless `finished`."""

    first_token_id: int
    logprob: Logprob | None
    finished: bool  # the first token ended the request: no Decode follows
    finish_reason: str  # "prefilled" unless finished
    num_cached_tokens: int
    kv_bytes: int = 0
    prefill_s: float = 0.0
    transfer_s: float = 0.0
    num_reused_tokens: int = 0  # chunk-cache rows reused (blended prefills)
    num_computed_tokens: float = 0.0  # rows computed by a blended prefill
    prompt_logprobs: list | None = None  # params.prompt_logprobs (entry 0 None: the first token has none)


@dataclass(frozen=True)
class TokenChunk:
    """Tokens streamed by Decode (decode node) or Generate (mixed node); the last one has `finished`."""

    token_ids: list[int]
    logprobs: list[Logprob]
    finished: bool = False
    finish_reason: str = ""
    num_cached_tokens: int = 0
    prompt_logprobs: list | None = None  # on one chunk (a mixed node's), as in PrefillResult


@dataclass(frozen=True)
class NodeLoad:
    """A node's Stats as the router reads them."""

    node_id: str
    free_blocks: int
    total_blocks: int
    block_size: int
    num_waiting: int
    num_running: int
    num_pending_prefill_tokens: int
    chunk_keys: frozenset[str]
