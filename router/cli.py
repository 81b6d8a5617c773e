"""The router's command line: `splitserve router` and its flags, each also read from SPLITSERVE_<FLAG>.

The router is imported only when the command runs (the CLI imports this module to build its
parser); run_router turns the flags into a frozen RouterConfig (router/config.py) once.
"""

from __future__ import annotations

import argparse

from splitserve import labels
from splitserve.flags import add_command, add_flag


def register(subparsers) -> None:
    add_command(subparsers, "router", "run the router (gRPC + OpenAI HTTP)", add_router_arguments, run)


def run(args: argparse.Namespace) -> int:
    from router.server import run_router

    return run_router(args)


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--model", None, "HF-format model folder (tokenizer and chat template)")
    add_flag(parser, "--host", "127.0.0.1", "address the router binds")
    add_flag(parser, "--port", labels.DEFAULT_ROUTER_GRPC_PORT, "gRPC port", type=int)
    add_flag(parser, "--http-port", labels.DEFAULT_ROUTER_HTTP_PORT, "OpenAI-compatible HTTP port (0: off; -1: any free port, "
         "shown in the READY line)", type=int)
    add_flag(parser, "--nodes", "", "static nodes: comma-separated ROLE=HOST:PORT (role: prefill, decode, mixed)")
    add_flag(parser, "--nodes-file", None, "static nodes from a YAML file")
    add_flag(parser, "--discovery", "static", "node discovery", choices=("static", "kubernetes"))
    add_flag(parser, "--k8s-namespace", "default", "namespace watched by Kubernetes discovery")
    add_flag(parser, "--k8s-selector", f"{labels.NAME_LABEL}={labels.APP_NAME}", "pod label selector")
    add_flag(parser, "--policy", "least_loaded", "routing policy")
    add_flag(parser, "--api-keys-file", None, "file with one API key per line; keys also come from env "
         "SPLITSERVE_API_KEYS, comma-separated (neither: no auth)")
    add_flag(parser, "--tls-dir", None, "folder with ca.pem, router.pem, router-key.pem (TLS + mTLS to nodes)")
    add_flag(parser, "--max-queue", 256, "most requests the router holds at once (queued or running on nodes); "
         "beyond it 429 / RESOURCE_EXHAUSTED", type=int)
    # -- issue 4 (HTTP API, load shedding, security): added flags
    add_flag(parser, "--served-model-name", None, "model id of the OpenAI API (default: the model folder's name); "
             "NAME,ALIAS,...: requests may also use the aliases (a response names the one it was asked by)")
    add_flag(parser, "--request-timeout-s", 600.0, "per-request deadline in seconds (0: none; a client's sooner "
         "deadline wins)", type=float)
    add_flag(parser, "--retry-after-s", 1.0, "Retry-After sent with 429 / RESOURCE_EXHAUSTED", type=float)
    add_flag(parser, "--max-request-bytes", 8 << 20, "largest HTTP request body (413 beyond)", type=int)
    add_flag(parser, "--http-read-timeout-s", 30.0, "an HTTP request's headers and body must arrive within this many "
             "seconds of its connection opening (or of the previous response) or the connection is closed", type=float)
    add_flag(parser, "--generation-config", "auto", "sampling settings an OpenAI request leaves out: auto, the "
             "model's recommended ones (generation_config.json or GGUF general.sampling.*, as vLLM and llama-server "
             "read them); none, OpenAI's (temperature 1, no top-k / top-p / min-p)", choices=("auto", "none"))
    add_flag(parser, "--responses-store", "memory", "where the Responses API keeps stored responses "
             "(previous_response_id): memory (this router only, bounded) or a redis:// URL (shared by router replicas)")
    add_flag(parser, "--responses-ttl-s", 30 * 24 * 3600.0, "with a Redis responses store: how long each is kept",
             type=float)
    add_flag(parser, "--embedding-pooling", "last", "how /v1/embeddings pools a prompt's final hidden states when "
             "the request names no `pooling`: last (the last token's, vLLM's default for decoder models) or mean",
             choices=("last", "mean"))  # router/config.py checks them against the engine's Pooling
    add_flag(parser, "--batch-concurrency", 4, "most lines of Batch API batches (/v1/batches) the router runs at "
             "once, over all batches (each also takes an admission slot, as a client's request)", type=int)
    add_flag(parser, "--batch-priority", 1, "priority of Batch API lines that set none (vLLM's: lower runs sooner; "
             "interactive requests have 0 and preempt batch lines when a node's engine is full)", type=int)
    add_flag(parser, "--batch-store", "memory", "where the Files and Batch APIs keep files and batches: memory (this "
             "router only, gone on restart) or a redis:// URL (shared by router replicas, kept across restarts)")
    add_flag(parser, "--batch-claim-s", 30.0, "with a Redis batch store: how long a batch's claim outlives a router "
             "that stopped renewing it, before another replica resumes the batch", type=float)
    add_flag(parser, "--batch-storage-bytes", 256 << 20, "most bytes of Files API files (batch inputs and outputs) "
             "the router keeps in memory; an upload that does not fit is refused (413)", type=int)
    add_flag(parser, "--allow-runtime-lora", False, "serve /v1/load_lora_adapter and /v1/unload_lora_adapter: any "
             "API key may then make every node load a LoRA adapter (PEFT folder, GGUF file) from its disk, or unload "
             "one",
             action="store_true")
    add_flag(parser, "--lora-store", "memory", "with --allow-runtime-lora, where the adapters loaded at runtime are "
             "recorded: memory (this router only, gone on restart) or a redis:// URL (shared by router replicas, kept "
             "across restarts: any replica then loads them onto nodes that join or restart)")
    add_flag(parser, "--max-local-prefill-tokens", 0, "conditional disaggregation (Dynamo's): a prompt (without "
             "documents) that leaves at most this many tokens to compute on a decode node, counting the conversation "
             "that node already holds, is prefilled there, with no KV transfer; a longer one holding a conversation "
             "goes split to that node (0: off)", type=int)
    add_flag(parser, "--no-decode-affinity", False, "send each split request to the policy's decode node, not to the "
             "one holding the most of its prompt in its prefix cache (a conversation's next turn: only the KV it "
             "lacks moves)", action="store_true")
    add_flag(parser, "--decode-affinity-slack", 2, "decode affinity gives a split request to the decode "
             "node holding its prompt only if that node runs at most this many requests more than the policy's "
             "choice (0: only when it is no busier)", type=int)
    add_flag(parser, "--cache-salt-per-key", False, "each API key's prompts share cached KV (prefix and chunk cache) "
             "only with that key's, so no tenant can time another's prompts (needs API keys)",
             action="store_true")
    add_flag(parser, "--tls-server-name", "", "name the nodes' certificates carry when it is not their address")
    add_flag(parser, "--plaintext-nodes", False, "with --tls-dir: TLS on the public ports only, plaintext to the nodes",
         action="store_true")
    # -- issue 4 (policies, discovery, health, failover): added flags
    add_flag(parser, "--health-interval-s", 0.5, "seconds between gRPC health checks of each node", type=float)
    add_flag(parser, "--health-timeout-s", 1.0, "a node that does not answer a health check within this fails it", type=float)
    add_flag(parser, "--unhealthy-after", 2, "failed health checks in a row that take a node out of routing", type=int)
    add_flag(parser, "--max-retries", 3, "re-dispatches of a request after node failures (failover) before it fails",
         type=int)
    add_flag(parser, "--retry-backoff-s", 0.05, "wait before the first re-dispatch, doubling after each (at most 1 s)",
         type=float)
