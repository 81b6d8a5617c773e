"""The Node service's calls as plain dataclasses.

The node servicers (prefill_node/servicer.py, decode_node/servicer.py) convert protobuf to and
from these; the workers take and return them. The router's node client (router/cluster/node_client.py)
returns them to the orchestrator. Nothing here imports gRPC or protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitserve.engine.block_log import BlockChanges

Logprob = tuple[float, list[tuple[int, float]]]  # (logprob of the token, [(token id, logprob)] of the top k)


@dataclass(frozen=True)
class KVTarget:
    """Where a request's KV goes: the decode node that reserved blocks for it."""

    node_id: str
    kv_address: str
    transport: str
    kv_dtype: str = ""  # the decode node's KV cache dtype (--dtype, --kv-cache-dtype); "": not said


@dataclass(frozen=True)
class Reservation:
    """A decode node's answer to Reserve: KV blocks are held for the request until its Decode (or expiry)."""

    target: KVTarget
    num_blocks: int
    num_cached_tokens: int = 0  # leading prompt tokens the node holds already: the prefill node sends the rest


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
    lora_adapters: frozenset[str] = frozenset()
    prefix_caching: bool = False  # unknown (a node that does not say): no cached prompt blocks to count on
    sends_partial_kv: bool = False  # a prefill node honouring PrefillRequest.num_target_cached_tokens
    kv_blocks: BlockChanges | None = None  # what its prefix cache gained and lost (None: the node does not say)
    lora_load_ids: tuple[tuple[str, str], ...] = ()  # (adapter, the id of its load there): NodeStats.lora_load_ids
    startup_lora_adapters: frozenset[str] = frozenset()  # NodeStats.startup_lora_adapters
