"""`splitserve node`: the node's flags (each also SPLITSERVE_<FLAG>) and its entry point.

Light at import time (the CLI imports it to build its parser): the node itself is imported
only when the command runs. The flags become a frozen NodeConfig (node/config.py) in run_node.
"""

from __future__ import annotations

import argparse

from splitserve import labels
from splitserve.flags import add_command, add_flag


def register(subparsers) -> None:
    add_command(subparsers, "node", "run a prefill, decode or mixed (colocated) node", add_node_arguments, run)


def run(args: argparse.Namespace) -> int:
    from node.server import run_node

    return run_node(args)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--role", labels.ROLE_MIXED, "node role", choices=labels.NODE_ROLES)
    add_flag(parser, "--model", None, "HF-format model folder")
    add_flag(parser, "--host", "127.0.0.1", "address the gRPC server binds")
    add_flag(parser, "--port", labels.DEFAULT_NODE_GRPC_PORT, "gRPC port", type=int)
    add_flag(parser, "--advertise-host", None, "address peers use to reach this node (default: --host)")
    add_flag(parser, "--metrics-port", 0, "Prometheus /metrics port (0: off; -1: any free port, shown in the READY line)",
         type=int)
    add_flag(parser, "--transport", "torch", "KV transport: torch (gloo on CPU, NCCL on CUDA), gloo (torch.distributed "
             "through host memory, for CUDA nodes without a GPU each) or grpc", choices=labels.KV_TRANSPORTS)
    add_flag(parser, "--kv-port", labels.DEFAULT_KV_PORT, "decode node: rendezvous port for KV transfer groups", type=int)
    add_flag(parser, "--device", "cpu", "torch device (cpu, cuda, cuda:0, ...)")
    add_flag(parser, "--dtype", "float32", "model dtype", choices=("float32", "bfloat16", "float16"))
    add_flag(parser, "--kv-cache-dtype", "auto", "KV cache dtype (vLLM's): auto (the model's), or float16 / bfloat16 "
             "for half an fp32 model's KV bytes (twice the tokens in --kv-cache-bytes, half the bytes to transfer); "
             "every node must use the same", choices=labels.KV_CACHE_DTYPES)
    add_flag(parser, "--threads", 1, "torch intra-op threads (with --cpu-share: the cores the host's nodes share)",
             type=int)
    add_flag(parser, "--cpu-share", None, "FILE:SLOT: this node shares --threads cores with the other nodes mapping "
             "FILE (one slot each): each step runs on the cores divided by the nodes stepping at the time")
    add_flag(parser, "--num-blocks", 0, "KV blocks in the pool (0: size from --kv-cache-bytes)", type=int)
    add_flag(parser, "--kv-cache-bytes", 1 << 30, "KV pool size in bytes when --num-blocks is 0", type=int)
    add_flag(parser, "--block-size", 16, "tokens per KV block", type=int)
    add_flag(parser, "--max-num-seqs", 64, "most requests in one batch", type=int)
    add_flag(parser, "--max-batched-tokens", 2048, "token budget of one engine step", type=int)
    add_flag(parser, "--max-embedding-tokens-per-step", 256, "most of a step's tokens embedding requests take "
             "(they yield to generating requests; short steps let a prompt arriving behind them start soon)", type=int)
    add_flag(parser, "--redis-url", None, "chunk-cache Redis URL (unset: no Redis tier)")
    add_flag(parser, "--tls-dir", None, "folder with ca.pem, node.pem, node-key.pem for mTLS (callers need a "
         "certificate from the same CA; the gRPC KV transport uses it too)")
    add_flag(parser, "--transfer-timeout-s", 30.0, "KV transfer timeout in seconds", type=float)
    add_flag(parser, "--one-shot-max-tokens", 256, "prefill: prompts up to this many tokens send their KV in one go after "
         "the prefill instead of layer by layer", type=int)
    add_flag(parser, "--step-log", None, "append one JSON line per engine step to this file, or to "
             "<node id>.jsonl in this folder (start, duration, the chunks it ran): how a loaded node's steps compare "
             "with its profile")
    add_flag(parser, "--fault-kv-send-delay-s", 0.0, "fault injection for tests: sleep this long before sending "
         "each KV layer", type=float)
    add_flag(parser, "--fault-step-delay-s", 0.0, "fault injection for tests: sleep this long after each engine step",
         type=float)
    add_flag(parser, "--fault-signals", False, "fault injection for tests: SIGUSR1 makes a prefill node drop its next KV "
         "transfer midway", action="store_true")
    add_flag(parser, "--kv-checksum", True, "verify a checksum of every transferred KV layer (the default; "
         "kept for compatibility)", action="store_true")
    parser.add_argument("--no-kv-checksum", dest="kv_checksum", action="store_false",
                        help="do not checksum transferred KV layers")
    add_flag(parser, "--lora-modules", [], "LoRA adapters requests may name, as NAME=PATH (a PEFT adapter folder or "
             "a GGUF LoRA file), space-separated: the OpenAI API's model NAME runs the base model with that adapter",
             nargs="+")
    add_flag(parser, "--speculative-config", "", "n-gram speculative decoding (prompt lookup), as vLLM's JSON: "
             "'{\"method\": \"ngram\", \"num_speculative_tokens\": 3}', optionally with prompt_lookup_max (4), "
             "prompt_lookup_min (3) and disable_by_batch_size; empty: off")
    add_flag(parser, "--no-prefix-caching", False, "turn off the engine's prefix cache (baselines)", action="store_true")
    add_flag(parser, "--chunk-cache-bytes", 256 << 20, "chunk-cache local tier budget in bytes (0: no chunk cache)", type=int)
    add_flag(parser, "--chunk-ttl-s", 86400, "chunk-cache Redis TTL in seconds", type=int)
    add_flag(parser, "--prefix-store-url", None, "share prompt KV blocks with every node naming this Redis "
             "(redis://...): a prompt block another node computed is read, not computed; decode and mixed nodes also "
             "store the blocks their answers filled, for a conversation's next turn (unset: off)")
    parser.add_argument("--no-prefix-store-answers", dest="prefix_store_answers", action="store_false",
                        help="decode and mixed nodes store no answer blocks in the prefix store (for traffic whose "
                        "answers never come back in a later prompt)")
    add_flag(parser, "--prefix-store-ttl-s", 86400, "how long the prefix store's Redis keeps a block, in seconds",
             type=int)
    add_flag(parser, "--chunk-int8", False, "store chunk KV in Redis as int8 with per-token scales", action="store_true")
    add_flag(parser, "--blend-check-layers", "2", "CacheBlend check layers, comma-separated (several: gradual filtering)")
    add_flag(parser, "--blend-ratio", "0.15", "recompute ratio per check layer, comma-separated, non-increasing; "
         "check layer 0 with ratio 0 is direct reuse")
    add_flag(parser, "--chunk-planning", "cachecraft", "per-chunk recompute budgets (cachecraft) or one ratio (ratio)",
         choices=("cachecraft", "ratio"))
    add_flag(parser, "--cachecraft-alpha", 1.0, "Cache-Craft fix-overhead scale alpha", type=float)
    add_flag(parser, "--chunk-variants", 5, "variants kept per chunk (Cache-Craft M)", type=int)
    add_flag(parser, "--chunk-live-variants", 4, "variants recorded per chunk from requests (the chunk as computed "
             "in their prompts); 0: a missed chunk is stored computed alone", type=int)
    add_flag(parser, "--chunk-eviction", "score", "local chunk tier eviction: Cache-Craft reuse x saving (score) or lru",
             choices=("score", "lru"))
    add_flag(parser, "--chunk-load", "layerwise", "read Redis chunk KV layer by layer while the blend computes "
             "(layerwise) or whole before it (whole)", choices=("layerwise", "whole"))
    add_flag(parser, "--chunk-stats-max-keys", 1024, "chunk keys listed in Stats replies", type=int)
