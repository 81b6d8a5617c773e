"""`splitserve node` and `splitserve router`: the long-running services.

These flags are the services' contract with the Helm chart and `splitserve up`; every flag
also reads an environment variable (SPLITSERVE_<FLAG>) so containers can be configured
either way.
"""

from __future__ import annotations

import argparse
import os

from splitserve import labels


def _env(name: str, default):
    value = os.environ.get("SPLITSERVE_" + name.upper().replace("-", "_"))
    if value is None:
        return default
    if isinstance(default, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return type(default)(value) if default is not None else value


def _add(parser: argparse.ArgumentParser, flag: str, default, help: str, **kw) -> None:
    name = flag.lstrip("-")
    parser.add_argument(flag, default=_env(name, default), help=f"{help} (env SPLITSERVE_{name.upper().replace('-', '_')})", **kw)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--role", labels.ROLE_MIXED, "node role", choices=labels.NODE_ROLES)
    _add(parser, "--model", None, "HF-format model folder")
    _add(parser, "--host", "127.0.0.1", "address the gRPC server binds")
    _add(parser, "--port", labels.DEFAULT_NODE_GRPC_PORT, "gRPC port", type=int)
    _add(parser, "--advertise-host", None, "address peers use to reach this node (default: --host)")
    _add(parser, "--metrics-port", 0, "Prometheus /metrics port (0: off; -1: any free port, shown in the READY line)",
         type=int)
    _add(parser, "--transport", "torch", "KV transport backend", choices=("torch", "grpc"))
    _add(parser, "--kv-port", labels.DEFAULT_KV_PORT, "decode node: rendezvous port for KV transfer groups", type=int)
    _add(parser, "--device", "cpu", "torch device (cpu, cuda, cuda:0, ...)")
    _add(parser, "--dtype", "float32", "model dtype", choices=("float32", "bfloat16", "float16"))
    _add(parser, "--threads", 1, "torch intra-op threads", type=int)
    _add(parser, "--num-blocks", 0, "KV blocks in the pool (0: size from --kv-cache-bytes)", type=int)
    _add(parser, "--kv-cache-bytes", 1 << 30, "KV pool size in bytes when --num-blocks is 0", type=int)
    _add(parser, "--block-size", 16, "tokens per KV block", type=int)
    _add(parser, "--max-num-seqs", 64, "most requests in one batch", type=int)
    _add(parser, "--max-batched-tokens", 2048, "token budget of one engine step", type=int)
    _add(parser, "--redis-url", None, "chunk-cache Redis URL (unset: no Redis tier)")
    _add(parser, "--tls-dir", None, "folder with ca.pem, node.pem, node-key.pem for mTLS (callers need a "
         "certificate from the same CA; the gRPC KV transport uses it too)")
    _add(parser, "--transfer-timeout-s", 30.0, "KV transfer timeout in seconds", type=float)
    _add(parser, "--one-shot-max-tokens", 256, "prefill: prompts up to this many tokens send their KV in one go after "
         "the prefill instead of layer by layer", type=int)
    _add(parser, "--fault-kv-send-delay-s", 0.0, "fault injection for tests: sleep this long before sending "
         "each KV layer", type=float)
    _add(parser, "--fault-step-delay-s", 0.0, "fault injection for tests: sleep this long after each engine step",
         type=float)
    _add(parser, "--fault-signals", False, "fault injection for tests: SIGUSR1 makes a prefill node drop its next KV "
         "transfer midway", action="store_true")
    _add(parser, "--kv-checksum", False, "verify a checksum of every transferred KV layer", action="store_true")
    _add(parser, "--no-prefix-caching", False, "turn off the engine's prefix cache (baselines)", action="store_true")
    _add(parser, "--chunk-cache-bytes", 256 << 20, "chunk-cache local tier budget in bytes (0: no chunk cache)", type=int)
    _add(parser, "--chunk-ttl-s", 86400, "chunk-cache Redis TTL in seconds", type=int)
    _add(parser, "--chunk-int8", False, "store chunk KV in Redis as int8 with per-token scales", action="store_true")
    _add(parser, "--blend-check-layers", "1", "CacheBlend check layers, comma-separated (several: gradual filtering)")
    _add(parser, "--blend-ratio", "0.15", "recompute ratio per check layer, comma-separated, non-increasing; "
         "check layer 0 with ratio 0 is direct reuse")
    _add(parser, "--chunk-planning", "cachecraft", "per-chunk recompute budgets (cachecraft) or one ratio (ratio)",
         choices=("cachecraft", "ratio"))
    _add(parser, "--cachecraft-alpha", 1.0, "Cache-Craft fix-overhead scale alpha", type=float)
    _add(parser, "--chunk-variants", 5, "variants kept per chunk (Cache-Craft M)", type=int)
    _add(parser, "--chunk-stats-max-keys", 1024, "chunk keys listed in Stats replies", type=int)


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--model", None, "HF-format model folder (tokenizer and chat template)")
    _add(parser, "--host", "127.0.0.1", "address the router binds")
    _add(parser, "--port", labels.DEFAULT_ROUTER_GRPC_PORT, "gRPC port", type=int)
    _add(parser, "--http-port", labels.DEFAULT_ROUTER_HTTP_PORT, "OpenAI-compatible HTTP port (0: off; -1: any free port, "
         "shown in the READY line)", type=int)
    _add(parser, "--nodes", "", "static nodes: comma-separated ROLE=HOST:PORT (role: prefill, decode, mixed)")
    _add(parser, "--nodes-file", None, "static nodes from a YAML file")
    _add(parser, "--discovery", "static", "node discovery", choices=("static", "kubernetes"))
    _add(parser, "--k8s-namespace", "default", "namespace watched by Kubernetes discovery")
    _add(parser, "--k8s-selector", f"{labels.NAME_LABEL}={labels.APP_NAME}", "pod label selector")
    _add(parser, "--policy", "least_loaded", "routing policy")
    _add(parser, "--api-keys-file", None, "file with one API key per line; keys also come from env "
         "SPLITSERVE_API_KEYS, comma-separated (neither: no auth)")
    _add(parser, "--tls-dir", None, "folder with ca.pem, router.pem, router-key.pem (TLS + mTLS to nodes)")
    _add(parser, "--max-queue", 256, "most requests the router holds at once (queued or running on nodes); "
         "beyond it 429 / RESOURCE_EXHAUSTED", type=int)
    # -- issue 4 (HTTP API, load shedding, security): added flags
    _add(parser, "--served-model-name", None, "model id of the OpenAI API (default: the model folder's name)")
    _add(parser, "--request-timeout-s", 600.0, "per-request deadline in seconds (0: none; a client's sooner "
         "deadline wins)", type=float)
    _add(parser, "--retry-after-s", 1.0, "Retry-After sent with 429 / RESOURCE_EXHAUSTED", type=float)
    _add(parser, "--max-request-bytes", 8 << 20, "largest HTTP request body (413 beyond)", type=int)
    _add(parser, "--tls-server-name", "", "name the nodes' certificates carry when it is not their address")
    _add(parser, "--plaintext-nodes", False, "with --tls-dir: TLS on the public ports only, plaintext to the nodes",
         action="store_true")
    # -- issue 4 (policies, discovery, health, failover): added flags
    _add(parser, "--health-interval-s", 0.5, "seconds between gRPC health checks of each node", type=float)
    _add(parser, "--health-timeout-s", 1.0, "a node that does not answer a health check within this fails it", type=float)
    _add(parser, "--unhealthy-after", 2, "failed health checks in a row that take a node out of routing", type=int)
    _add(parser, "--max-retries", 3, "re-dispatches of a request after node failures (failover) before it fails",
         type=int)
    _add(parser, "--retry-backoff-s", 0.05, "wait before the first re-dispatch, doubling after each (at most 1 s)",
         type=float)


def register(subparsers) -> None:
    node = subparsers.add_parser("node", help="run a prefill, decode or mixed (colocated) node")
    add_node_arguments(node)
    node.set_defaults(func=_run_node)
    router = subparsers.add_parser("router", help="run the router (gRPC + OpenAI HTTP)")
    add_router_arguments(router)
    router.set_defaults(func=_run_router)


def _run_node(args: argparse.Namespace) -> int:
    from node.server import run_node

    return run_node(args)


def _run_router(args: argparse.Namespace) -> int:
    from router.server import run_router

    return run_router(args)
