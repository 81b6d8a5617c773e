"""The router's configuration: frozen dataclasses built once from the flags (`RouterConfig.from_args`)
and passed down. Each validates itself; a bad value is a ValueError naming it (the router exits with 2)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from splitserve import labels
from router.cluster.failover import RetryConfig
from router.cluster.health import HealthConfig
from router.cluster.local_prefill import AFFINITY_SLACK
from router.front.admission import AdmissionConfig
from splitserve.engine.gguf_reader import model_name
from splitserve.engine.pooling import Pooling

DISCOVERY_KINDS = ("static", "kubernetes")
GENERATION_CONFIGS = ("auto", "none")
EMBEDDING_POOLINGS = tuple(p.value for p in Pooling)


@dataclass(frozen=True)
class SecurityConfig:
    api_keys_file: str | None = None  # keys also come from env SPLITSERVE_API_KEYS
    tls_dir: str | None = None  # ca.pem, router.pem, router-key.pem: TLS on the public ports, mTLS to nodes
    tls_server_name: str = ""  # the name node certificates carry when it is not their address
    plaintext_nodes: bool = False  # with tls_dir: TLS on the public ports only
    cache_salt_per_key: bool = False  # each API key's prompts share cached KV only with that key's


@dataclass(frozen=True)
class RouterConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = labels.DEFAULT_ROUTER_GRPC_PORT
    http_port: int = labels.DEFAULT_ROUTER_HTTP_PORT  # 0: off; -1: any free port
    nodes: str = ""  # ROLE=HOST:PORT,...
    nodes_file: str | None = None
    discovery: str = "static"
    k8s_namespace: str = "default"
    k8s_selector: str = f"{labels.NAME_LABEL}={labels.APP_NAME}"
    policy: str = "least_loaded"
    served_model_name: str | None = None
    max_request_bytes: int = 8 << 20
    http_read_timeout_s: float = 30.0  # a request's headers and body must arrive within it (slowloris)
    generation_config: str = "auto"  # auto: the model's recommended sampling defaults on the OpenAI API; none: OpenAI's
    responses_store: str = "memory"  # the Responses API's stored responses: memory, or a redis:// URL (shared)
    responses_ttl_s: float = 30 * 24 * 3600.0  # how long Redis keeps each
    embedding_pooling: str = "last"  # how an embedding request that names none pools: last or mean
    batch_concurrency: int = 4  # Batch API lines in flight at once, over all batches
    batch_priority: int = 1  # the priority of Batch API lines that set none (interactive requests: 0)
    batch_storage_bytes: int = 256 << 20  # Files API: the bytes of files kept
    batch_store: str = "memory"  # files and batches: memory, or a redis:// URL (shared by router replicas)
    batch_claim_s: float = 30.0  # Redis store: a stopped router's batches are resumed elsewhere after this
    allow_runtime_lora: bool = False  # /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's runtime updating)
    lora_store: str = "memory"  # where the adapters loaded at runtime are recorded: memory, or a redis:// URL (shared)
    max_local_prefill_tokens: int = 0  # conditional disaggregation: shorter prompts prefill on their decode node
    decode_affinity: bool = True  # split requests go to the decode node holding their prefix (local_prefill.py)
    decode_affinity_slack: int = AFFINITY_SLACK  # ... if it runs at most this many requests more than the policy's
    health: HealthConfig = field(default_factory=HealthConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required (the tokenizer and chat template come from it)")
        if self.http_read_timeout_s <= 0:
            raise ValueError(f"--http-read-timeout-s must be > 0, got {self.http_read_timeout_s}")
        if any(not name.isprintable() or " " in name for name in self._served_names):
            raise ValueError(f"--served-model-name: names are comma-separated, without spaces, got "
                             f"{self.served_model_name!r}")
        redis_schemes = ("redis://", "rediss://", "unix://")
        for flag, store in (("--responses-store", self.responses_store), ("--batch-store", self.batch_store),
                            ("--lora-store", self.lora_store)):
            if store != "memory" and not store.startswith(redis_schemes):
                raise ValueError(f"{flag} must be memory or a redis:// URL, got {store!r}")
        if self.lora_store != "memory" and not self.allow_runtime_lora:
            raise ValueError("--lora-store records the adapters loaded at runtime: it needs --allow-runtime-lora")
        if self.responses_ttl_s <= 0:
            raise ValueError(f"--responses-ttl-s must be > 0, got {self.responses_ttl_s}")
        if self.generation_config not in GENERATION_CONFIGS:
            raise ValueError(f"--generation-config must be one of {', '.join(GENERATION_CONFIGS)}, "
                             f"got {self.generation_config!r}")
        if self.embedding_pooling not in EMBEDDING_POOLINGS:
            raise ValueError(f"--embedding-pooling must be one of {', '.join(EMBEDDING_POOLINGS)}, "
                             f"got {self.embedding_pooling!r}")
        if self.batch_claim_s <= 0:
            raise ValueError(f"--batch-claim-s must be > 0, got {self.batch_claim_s}")
        if self.batch_concurrency < 1 or self.batch_storage_bytes < 1:
            raise ValueError(f"--batch-concurrency and --batch-storage-bytes must be >= 1, got "
                             f"{self.batch_concurrency} and {self.batch_storage_bytes}")
        if self.max_local_prefill_tokens < 0:
            raise ValueError(f"--max-local-prefill-tokens must be >= 0 (0: off), got {self.max_local_prefill_tokens}")
        if self.discovery not in DISCOVERY_KINDS:
            raise ValueError(f"discovery must be one of {', '.join(DISCOVERY_KINDS)}, got {self.discovery!r}")

    @property
    def model_name(self) -> str:
        """The model id of the OpenAI API (the first of --served-model-name's names)."""
        return self._served_names[0] if self._served_names else model_name(self.model)

    @property
    def model_aliases(self) -> tuple[str, ...]:
        """More names requests may use for the model (--served-model-name's after the first)."""
        return self._served_names[1:]

    @property
    def _served_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in (self.served_model_name or "").split(",") if name.strip())

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RouterConfig":
        return cls(args.model, args.host, args.port, args.http_port, args.nodes, args.nodes_file, args.discovery,
                   args.k8s_namespace, args.k8s_selector, args.policy, args.served_model_name, args.max_request_bytes,
                   args.http_read_timeout_s, args.generation_config, args.responses_store, args.responses_ttl_s,
                   args.embedding_pooling, args.batch_concurrency, args.batch_priority, args.batch_storage_bytes,
                   args.batch_store, args.batch_claim_s, args.allow_runtime_lora, args.lora_store,
                   args.max_local_prefill_tokens,
                   not args.no_decode_affinity, args.decode_affinity_slack,
                   HealthConfig(args.health_interval_s, args.health_timeout_s, args.unhealthy_after),
                   RetryConfig(args.max_retries, args.retry_backoff_s, max(1.0, args.retry_backoff_s)),
                   AdmissionConfig(args.max_queue, args.retry_after_s, args.request_timeout_s),
                   SecurityConfig(args.api_keys_file, args.tls_dir, args.tls_server_name, args.plaintext_nodes,
                                  args.cache_salt_per_key))
