"""A node's configuration: frozen dataclasses built once from the flags (`NodeConfig.from_args`) and
passed down. Each validates itself; a bad value is a ValueError naming it (the node exits with 2)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from splitserve import labels
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.cachecraft import CacheCraftConfig
from splitserve.chunkcache.runner import ChunkCacheConfig
from splitserve.engine import EngineConfig
from splitserve.engine.lora_names import parse_lora_modules
from splitserve.engine.speculation import NgramSpeculation
from splitserve.kvtransfer import TransferConfig, transport_backend
from splitserve.runtime.cpu_share import parse_cpu_share


@dataclass(frozen=True)
class KVConfig:
    """KV transfer: prefill nodes send, decode nodes receive."""

    transport: str = "torch"
    kv_port: int = labels.DEFAULT_KV_PORT  # decode, torch transport: the rendezvous port (0: any free port)
    timeout_s: float = 30.0
    checksum: bool = True
    one_shot_max_tokens: int = 256  # prefill: shorter prompts send all layers after the step
    fault_send_delay_s: float = 0.0  # fault injection: sleep before each layer's send

    def __post_init__(self) -> None:
        transport_backend(self.transport, "cpu")  # ValueError for a transport no node knows
        if self.kv_port < 0 or self.one_shot_max_tokens < 0 or self.fault_send_delay_s < 0:
            raise ValueError("kv_port, one_shot_max_tokens and fault_kv_send_delay_s must be >= 0")

    def transfer_config(self, device: str) -> TransferConfig:
        """For this node's own transport (a prefill node's senders follow each decode node's: SenderPool)."""
        return TransferConfig(timeout_s=self.timeout_s, device=transport_backend(self.transport, device)[1])


@dataclass(frozen=True)
class ChunkPathConfig:
    """The chunk cache of prefill and mixed nodes; `cache` is None when it is off (local_bytes 0)."""

    local_bytes: int = 256 << 20
    cache: ChunkCacheConfig | None = None
    redis_url: str | None = None
    ttl_s: int = 86400
    int8: bool = False
    stats_max_keys: int = 1024

    @property
    def enabled(self) -> bool:
        return self.local_bytes > 0 and self.cache is not None


@dataclass(frozen=True)
class NodeConfig:
    role: str
    model: str
    engine: EngineConfig
    kv: KVConfig
    chunks: ChunkPathConfig
    host: str = "127.0.0.1"
    port: int = labels.DEFAULT_NODE_GRPC_PORT
    advertise_host: str | None = None
    metrics_port: int = 0
    threads: int = 1
    tls_dir: str | None = None
    fault_step_delay_s: float = 0.0
    fault_signals: bool = False
    step_log: str | None = None  # JSONL of every engine step (runtime/step_log.py)
    cpu_share: str | None = None  # FILE:SLOT: threads = this node's share of them (runtime/cpu_share.py)
    prefix_store_url: str | None = None  # prompt (and answer) blocks shared through this Redis
    prefix_store_ttl_s: int = 86400
    prefix_store_answers: bool = True  # decode and mixed nodes store the blocks their answers filled

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required")
        if self.role not in labels.NODE_ROLES:
            raise ValueError(f"role must be one of {', '.join(labels.NODE_ROLES)}, got {self.role!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.prefix_store_ttl_s < 1:
            raise ValueError(f"--prefix-store-ttl-s must be >= 1, got {self.prefix_store_ttl_s}")
        if self.prefix_store_url is not None and not self.prefix_store_url.startswith(("redis://", "rediss://",
                                                                                           "unix://")):
            raise ValueError(f"--prefix-store-url must be a redis://, rediss:// or unix:// URL, "
                             f"got {self.prefix_store_url!r}")
        if self.cpu_share is not None:
            path = Path(parse_cpu_share(self.cpu_share)[0])
            if not path.absolute().parent.is_dir():
                raise ValueError(f"--cpu-share: the folder of {path} does not exist")

    @property
    def advertised_host(self) -> str:
        return self.advertise_host or self.host

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "NodeConfig":
        return cls(args.role, args.model, _engine(args), _kv(args), _chunks(args), args.host, args.port,
                   args.advertise_host, args.metrics_port, args.threads, args.tls_dir, args.fault_step_delay_s,
                   args.fault_signals, args.step_log, args.cpu_share, args.prefix_store_url or None,
                   args.prefix_store_ttl_s, args.prefix_store_answers)


def _engine(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype, device=args.device,
                        block_size=args.block_size, num_blocks=args.num_blocks,
                        kv_cache_bytes=args.kv_cache_bytes, max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_batched_tokens,
                        max_embedding_tokens_per_step=args.max_embedding_tokens_per_step,
                        enable_prefix_caching=not args.no_prefix_caching,
                        lora_modules=parse_lora_modules(args.lora_modules),
                        speculative=NgramSpeculation.from_json(args.speculative_config))


def _kv(args: argparse.Namespace) -> KVConfig:
    return KVConfig(args.transport, args.kv_port, args.transfer_timeout_s, args.kv_checksum, args.one_shot_max_tokens,
                    args.fault_kv_send_delay_s)


def _chunks(args: argparse.Namespace) -> ChunkPathConfig:
    cache = _chunk_cache(args) if args.chunk_cache_bytes > 0 and args.role != labels.ROLE_DECODE else None
    return ChunkPathConfig(args.chunk_cache_bytes, cache, args.redis_url, args.chunk_ttl_s, args.chunk_int8,
                           args.chunk_stats_max_keys)


def _chunk_cache(args: argparse.Namespace) -> ChunkCacheConfig:
    layers = tuple(int(x) for x in str(args.blend_check_layers).split(","))
    ratios = tuple(float(x) for x in str(args.blend_ratio).split(","))
    craft = CacheCraftConfig(args.cachecraft_alpha, ratios[-1], args.chunk_variants)
    return ChunkCacheConfig(BlendConfig(layers, ratios), craft, args.chunk_planning,
                            live_variants=args.chunk_live_variants, eviction=args.chunk_eviction,
                            layerwise_load=args.chunk_load == "layerwise")
