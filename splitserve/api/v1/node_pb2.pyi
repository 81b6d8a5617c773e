from splitserve.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChunkSpan(_message.Message):
    __slots__ = ("start", "length")
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    start: int
    length: int
    def __init__(self, start: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class KVTarget(_message.Message):
    __slots__ = ("node_id", "kv_address", "transport", "kv_dtype")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KV_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    KV_DTYPE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    kv_address: str
    transport: str
    kv_dtype: str
    def __init__(self, node_id: _Optional[str] = ..., kv_address: _Optional[str] = ..., transport: _Optional[str] = ..., kv_dtype: _Optional[str] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "target", "num_prior_output_tokens", "chunks", "num_target_cached_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    NUM_PRIOR_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NUM_TARGET_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    target: KVTarget
    num_prior_output_tokens: int
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkSpan]
    num_target_cached_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., target: _Optional[_Union[KVTarget, _Mapping]] = ..., num_prior_output_tokens: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[ChunkSpan, _Mapping]]] = ..., num_target_cached_tokens: _Optional[int] = ...) -> None: ...

class PrefillReply(_message.Message):
    __slots__ = ("first_token_id", "logprob", "finished", "finish_reason", "num_cached_tokens", "kv_bytes", "timings", "num_reused_tokens", "num_computed_tokens", "prompt_logprobs")
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    NUM_REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    first_token_id: int
    logprob: _common_pb2.TokenLogprob
    finished: bool
    finish_reason: str
    num_cached_tokens: int
    kv_bytes: int
    timings: _common_pb2.Timings
    num_reused_tokens: int
    num_computed_tokens: float
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    def __init__(self, first_token_id: _Optional[int] = ..., logprob: _Optional[_Union[_common_pb2.TokenLogprob, _Mapping]] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., num_cached_tokens: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., num_reused_tokens: _Optional[int] = ..., num_computed_tokens: _Optional[float] = ..., prompt_logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("request_id", "num_prompt_tokens", "prefill_node_id", "prompt_token_ids", "cache_salt", "lora")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    num_prompt_tokens: int
    prefill_node_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_salt: str
    lora: str
    def __init__(self, request_id: _Optional[str] = ..., num_prompt_tokens: _Optional[int] = ..., prefill_node_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., cache_salt: _Optional[str] = ..., lora: _Optional[str] = ...) -> None: ...

class ReserveReply(_message.Message):
    __slots__ = ("target", "num_blocks", "num_cached_tokens")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    target: KVTarget
    num_blocks: int
    num_cached_tokens: int
    def __init__(self, target: _Optional[_Union[KVTarget, _Mapping]] = ..., num_blocks: _Optional[int] = ..., num_cached_tokens: _Optional[int] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "first_token_id", "sampling", "num_prior_output_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    NUM_PRIOR_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    first_token_id: int
    sampling: _common_pb2.SamplingParams
    num_prior_output_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., first_token_id: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., num_prior_output_tokens: _Optional[int] = ...) -> None: ...

class NodeGenerateRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "num_prior_output_tokens", "chunks")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    NUM_PRIOR_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    num_prior_output_tokens: int
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkSpan]
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., num_prior_output_tokens: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[ChunkSpan, _Mapping]]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "logprobs", "finished", "finish_reason", "num_cached_tokens", "prompt_logprobs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    finished: bool
    finish_reason: str
    num_cached_tokens: int
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., num_cached_tokens: _Optional[int] = ..., prompt_logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("want_kv_blocks", "kv_blocks_node_id", "kv_blocks_after")
    WANT_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_AFTER_FIELD_NUMBER: _ClassVar[int]
    want_kv_blocks: bool
    kv_blocks_node_id: str
    kv_blocks_after: int
    def __init__(self, want_kv_blocks: _Optional[bool] = ..., kv_blocks_node_id: _Optional[str] = ..., kv_blocks_after: _Optional[int] = ...) -> None: ...

class KvBlocks(_message.Message):
    __slots__ = ("snapshot", "stored", "removed", "seq")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    snapshot: bool
    stored: _containers.RepeatedScalarFieldContainer[bytes]
    removed: _containers.RepeatedScalarFieldContainer[bytes]
    seq: int
    def __init__(self, snapshot: _Optional[bool] = ..., stored: _Optional[_Iterable[bytes]] = ..., removed: _Optional[_Iterable[bytes]] = ..., seq: _Optional[int] = ...) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("node_id", "role", "num_waiting", "num_running", "num_pending_prefill_tokens", "num_total_blocks", "num_free_blocks", "num_used_blocks", "num_reserved", "block_size", "kv_address", "transport", "chunk_cache", "chunk_keys", "lora_adapters", "prefix_caching", "sends_partial_kv", "kv_blocks", "lora_load_ids", "startup_lora_adapters")
    class LoraLoadIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_PENDING_PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOTAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_USED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_RESERVED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CACHE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_KEYS_FIELD_NUMBER: _ClassVar[int]
    LORA_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHING_FIELD_NUMBER: _ClassVar[int]
    SENDS_PARTIAL_KV_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LORA_LOAD_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTUP_LORA_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    num_waiting: int
    num_running: int
    num_pending_prefill_tokens: int
    num_total_blocks: int
    num_free_blocks: int
    num_used_blocks: int
    num_reserved: int
    block_size: int
    kv_address: str
    transport: str
    chunk_cache: ChunkCacheStats
    chunk_keys: _containers.RepeatedScalarFieldContainer[str]
    lora_adapters: _containers.RepeatedScalarFieldContainer[str]
    prefix_caching: bool
    sends_partial_kv: bool
    kv_blocks: KvBlocks
    lora_load_ids: _containers.ScalarMap[str, str]
    startup_lora_adapters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., num_waiting: _Optional[int] = ..., num_running: _Optional[int] = ..., num_pending_prefill_tokens: _Optional[int] = ..., num_total_blocks: _Optional[int] = ..., num_free_blocks: _Optional[int] = ..., num_used_blocks: _Optional[int] = ..., num_reserved: _Optional[int] = ..., block_size: _Optional[int] = ..., kv_address: _Optional[str] = ..., transport: _Optional[str] = ..., chunk_cache: _Optional[_Union[ChunkCacheStats, _Mapping]] = ..., chunk_keys: _Optional[_Iterable[str]] = ..., lora_adapters: _Optional[_Iterable[str]] = ..., prefix_caching: _Optional[bool] = ..., sends_partial_kv: _Optional[bool] = ..., kv_blocks: _Optional[_Union[KvBlocks, _Mapping]] = ..., lora_load_ids: _Optional[_Mapping[str, str]] = ..., startup_lora_adapters: _Optional[_Iterable[str]] = ...) -> None: ...

class ChunkCacheStats(_message.Message):
    __slots__ = ("num_local_chunks", "local_bytes", "redis", "local_hits", "redis_hits", "misses", "redis_errors", "corrupt_values", "blended_requests", "recompute_fraction", "blend_time_s", "redis_bytes_read", "redis_bytes_written")
    NUM_LOCAL_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    REDIS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_HITS_FIELD_NUMBER: _ClassVar[int]
    REDIS_HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    REDIS_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_VALUES_FIELD_NUMBER: _ClassVar[int]
    BLENDED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BLEND_TIME_S_FIELD_NUMBER: _ClassVar[int]
    REDIS_BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    REDIS_BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    num_local_chunks: int
    local_bytes: int
    redis: bool
    local_hits: int
    redis_hits: int
    misses: int
    redis_errors: int
    corrupt_values: int
    blended_requests: int
    recompute_fraction: float
    blend_time_s: float
    redis_bytes_read: int
    redis_bytes_written: int
    def __init__(self, num_local_chunks: _Optional[int] = ..., local_bytes: _Optional[int] = ..., redis: _Optional[bool] = ..., local_hits: _Optional[int] = ..., redis_hits: _Optional[int] = ..., misses: _Optional[int] = ..., redis_errors: _Optional[int] = ..., corrupt_values: _Optional[int] = ..., blended_requests: _Optional[int] = ..., recompute_fraction: _Optional[float] = ..., blend_time_s: _Optional[float] = ..., redis_bytes_read: _Optional[int] = ..., redis_bytes_written: _Optional[int] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("documents", "in_context")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    IN_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedScalarFieldContainer[str]
    in_context: bool
    def __init__(self, documents: _Optional[_Iterable[str]] = ..., in_context: _Optional[bool] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("num_chunks", "num_tokens", "chunk_hashes")
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_HASHES_FIELD_NUMBER: _ClassVar[int]
    num_chunks: int
    num_tokens: int
    chunk_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, num_chunks: _Optional[int] = ..., num_tokens: _Optional[int] = ..., chunk_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeEmbedRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "pooling", "no_normalize", "priority", "cache_salt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    NO_NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    pooling: str
    no_normalize: bool
    priority: int
    cache_salt: str
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., pooling: _Optional[str] = ..., no_normalize: _Optional[bool] = ..., priority: _Optional[int] = ..., cache_salt: _Optional[str] = ...) -> None: ...

class NodeEmbedReply(_message.Message):
    __slots__ = ("embedding", "num_cached_tokens")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    num_cached_tokens: int
    def __init__(self, embedding: _Optional[_Iterable[float]] = ..., num_cached_tokens: _Optional[int] = ...) -> None: ...

class LoraAdapterRequest(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class LoraAdapterReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
