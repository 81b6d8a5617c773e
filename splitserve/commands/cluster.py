"""`splitserve up` (a local cluster as processes), `splitserve complete` (a streaming request) and
`splitserve embed` (embeddings from a router)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from splitserve import labels
from splitserve.commands.sampling_flags import add_sampling_flags, sampling_kwargs
from splitserve.localcluster.devices import plan_devices

SAMPLE_QUESTION = "What is the capital of France? Answer in one sentence."
SAMPLE_PROMPT = "The history of the city begins"  # models without a chat template
DEMO_PRESET = "smollm2-135m-instruct"


def register(subparsers) -> None:
    up = subparsers.add_parser("up", help="start a local cluster: router + prefill/decode (or mixed) nodes")
    up.add_argument("--model", default=None, help=f"model folder or .gguf file (default: the {DEMO_PRESET} demo "
                    "model, prepared on first use)")
    up.add_argument("--prefill", type=int, default=None, help="prefill nodes (default 1, or 0 with --colocated)")
    up.add_argument("--decode", type=int, default=None, help="decode nodes (default 1, or 0 with --colocated)")
    up.add_argument("--colocated", type=int, default=0, help="mixed nodes running both phases")
    up.add_argument("--transport", default="torch", choices=labels.KV_TRANSPORTS,
                    help="KV transport between nodes: torch (gloo on CPU, NCCL on CUDA), gloo (host copies) or grpc")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=labels.DEFAULT_ROUTER_GRPC_PORT, help="router gRPC port")
    up.add_argument("--http-port", type=int, default=labels.DEFAULT_ROUTER_HTTP_PORT,
                    help="router OpenAI HTTP port (0: off; -1: any free port)")
    up.add_argument("--threads", type=int, default=0, help="torch threads per node (0: the host's cores, shared by "
                    "the nodes: each step runs on them divided by the nodes stepping at the time, see --cpu-share)")
    up.add_argument("--device", default="cpu", help="cpu, cuda (node k on cuda:k; nodes share GPUs when there are "
                    "fewer, and then the KV goes over gloo through host memory) or cuda:INDEX (every node on it)")
    up.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                    help="model dtype on every node (default: the nodes' float32)")
    up.add_argument("--kv-cache-dtype", default=None, choices=labels.KV_CACHE_DTYPES,
                    help="KV cache dtype on every node (default: auto, the model's); float16 / bfloat16 halve an fp32 "
                         "model's KV")
    up.add_argument("--policy", default="least_loaded")
    up.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                    help="LoRA adapters (PEFT folders or GGUF LoRA files) every node loads; the OpenAI API's model "
                         "NAME runs one")
    up.add_argument("--node-arg", action="append", default=[], help="extra flag passed to every node (repeatable)")
    up.add_argument("--router-arg", action="append", default=[],
                    help="extra flag passed to the router, e.g. --router-arg=--generation-config=none (repeatable)")
    up.add_argument("--redis-url", default=None, help="chunk-cache Redis (default: a private redis-server on a free "
                    "loopback port when one is installed, else the local tier alone)")
    up.add_argument("--prefix-store", action="store_true", help="the nodes share prompt KV blocks through "
                    "that Redis (--prefix-store-url): a prompt one node computed (or an answer it generated), another "
                    "reads")
    up.add_argument("--sample", action="store_true", help="send a sample request once the cluster is up")
    up.add_argument("--exit-after-sample", action="store_true", help="stop the cluster after the sample request")
    up.set_defaults(func=run_up)

    complete = subparsers.add_parser("complete", help="stream a completion from a router")
    complete.add_argument("--url", default=f"grpc://127.0.0.1:{labels.DEFAULT_ROUTER_GRPC_PORT}")
    complete.add_argument("--prompt", required=True)
    complete.add_argument("--max-tokens", type=int, default=32)
    complete.add_argument("--temperature", type=float, default=0.0)
    complete.add_argument("--seed", type=int, default=None)
    complete.add_argument("--stop", action="append", default=[])
    complete.add_argument("--document", action="append", default=[], help="RAG passage (repeatable)")
    complete.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    complete.add_argument("--api-key", default=None)
    complete.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    add_sampling_flags(complete)
    complete.set_defaults(func=run_complete)

    embed = subparsers.add_parser("embed", help="embeddings from a router: one JSON line per text")
    embed.add_argument("texts", nargs="+", metavar="TEXT")
    embed.add_argument("--url", default=f"grpc://127.0.0.1:{labels.DEFAULT_ROUTER_GRPC_PORT}")
    embed.add_argument("--pooling", default="", choices=("", "last", "mean"),
                       help="last token or mean of the final hidden states (default: the router's)")
    embed.add_argument("--no-normalize", action="store_true", help="the pooled vectors as they are (not L2-normalized)")
    embed.add_argument("--api-key", default=None)
    embed.set_defaults(func=run_embed)


def run_up(args: argparse.Namespace) -> int:
    from splitserve.engine.gguf_reader import model_name
    from splitserve.localcluster.cluster import LocalCluster, model_or_demo
    from splitserve.runtime.cpu_share import host_cores

    if args.threads < 0:
        print(f"splitserve up: --threads must be >= 0 (0: the host's cores, shared), got {args.threads}", file=sys.stderr)
        return 2
    prefill, decode = pool_sizes(args.prefill, args.decode, args.colocated)
    roles = [labels.ROLE_PREFILL] * prefill + [labels.ROLE_DECODE] * decode + [labels.ROLE_MIXED] * args.colocated
    try:
        devices, transport, note = plan_devices(args.device, roles, gpu_count(args.device), args.transport)
    except ValueError as exc:
        print(f"splitserve up: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note, flush=True)
    model = model_or_demo(args.model, DEMO_PRESET)
    node_args = (["--dtype", args.dtype] if args.dtype else []) + args.node_arg
    node_args += ["--kv-cache-dtype", args.kv_cache_dtype] if args.kv_cache_dtype else []
    node_args += ["--lora-modules", *args.lora_modules] if args.lora_modules else []
    cluster = LocalCluster(model, prefill=prefill, decode=decode, colocated=args.colocated, transport=transport,
                           host=args.host, port=args.port, http_port=args.http_port,
                           threads=args.threads or host_cores(), policy=args.policy, node_args=node_args,
                           router_args=args.router_arg, redis_url=args.redis_url, private_redis=True, devices=devices,
                           share_cores=args.threads == 0, prefix_store=args.prefix_store)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        cluster.start(log=lambda line: print(line, flush=True))
        http = f"  OpenAI API at {cluster.http_url}/v1" if cluster.http_url else ""
        print(f"cluster ready: router at {cluster.url}{http}  model {model_name(model)}  (Ctrl-C stops it)", flush=True)
        if args.sample:
            _sample(cluster.url, chat=has_chat_template(model))
        if not args.exit_after_sample:
            done.wait()
    finally:
        print("stopping the cluster ...", flush=True)
        cluster.stop()
    return 0


def gpu_count(device: str) -> int:
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def pool_sizes(prefill: int | None, decode: int | None, colocated: int) -> tuple[int, int]:
    """`--colocated K` alone means K mixed nodes and nothing else; prefill/decode pools default to 1 each."""
    default = 0 if colocated and prefill is None and decode is None else 1
    return (default if prefill is None else prefill), (default if decode is None else decode)


def has_chat_template(model) -> bool:
    from splitserve.engine.tokenizer import Tokenizer

    return Tokenizer.from_dir(model).chat_template is not None


def _sample(url: str, chat: bool) -> None:
    from splitserve.client import Client, Final

    text = SAMPLE_QUESTION if chat else SAMPLE_PROMPT
    request = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
    print(f"sample request{' (chat)' if chat else ''}: {text!r}\n---", flush=True)
    with Client(url) as client:
        for event in client.generate(**request, max_tokens=48, temperature=0.0):
            if isinstance(event, Final):
                print(f"\n--- {event.completion_tokens} tokens, finish={event.finish_reason}, "
                      f"ttft={event.ttft_s * 1000:.1f} ms, total={event.e2e_s * 1000:.1f} ms, "
                      f"prefill={event.prefill_node} decode={event.decode_node}", flush=True)
            else:
                print(event.text, end="", flush=True)


def run_complete(args: argparse.Namespace) -> int:
    import json

    import grpc

    from splitserve.client import Client, Final, collect

    kwargs = dict(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, stop=args.stop,
                  documents=args.document, **sampling_kwargs(args))
    if args.chat:
        kwargs["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        kwargs["prompt"] = args.prompt
    try:
        with Client(args.url, api_key=args.api_key) as client:
            events = []
            for event in client.generate(**kwargs):
                events.append(event)
                if not args.json and not isinstance(event, Final):
                    print(event.text, end="", flush=True)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    result = collect(events)
    if args.json:
        print(json.dumps({"token_ids": result.token_ids, "text": result.text, "finish_reason": result.final.finish_reason,
                          "usage": {"prompt_tokens": result.final.prompt_tokens,
                                    "completion_tokens": result.final.completion_tokens}}))
    else:
        print()
    return 0


def run_embed(args: argparse.Namespace) -> int:
    import json

    import grpc

    from splitserve.client import Client

    try:
        with Client(args.url, api_key=args.api_key) as client:
            vectors = client.embed(args.texts, pooling=args.pooling, normalize=not args.no_normalize)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    for text, vector in zip(args.texts, vectors):
        print(json.dumps({"text": text, "embedding": vector}))
    return 0
