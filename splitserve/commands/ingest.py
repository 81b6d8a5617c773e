"""`splitserve ingest --url grpc://NODE FILES`: store documents' chunk KV in a node's chunk cache.

Each text file is one document (or one per blank-line-separated paragraph with --paragraphs);
a .json file holds a list of strings, of {"text": ...} objects, or MuSiQue-style objects with
"ctxs". With a Redis tier the chunks are then found by every node sharing that Redis.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="compute and store RAG documents' KV in a node's chunk cache")
    p.add_argument("--url", required=True, help="a prefill or mixed node, grpc://HOST:PORT")
    p.add_argument("files", nargs="+", help="text files (one document each) or .json lists of documents")
    p.add_argument("--paragraphs", action="store_true", help="split text files at blank lines")
    p.add_argument("--in-context", action="store_true",
                   help="also store each document as computed after the ones before it (exact reuse in that order)")
    p.add_argument("--batch", type=int, default=16, help="documents per IngestDocuments call")
    p.set_defaults(func=run_ingest)


def read_documents(paths: list[str], paragraphs: bool = False) -> list[str]:
    docs: list[str] = []
    for path in map(Path, paths):
        text = path.read_text()
        if path.suffix == ".json":
            docs += _json_documents(json.loads(text))
        elif paragraphs:
            docs += [p.strip() for p in text.split("\n\n") if p.strip()]
        elif text.strip():
            docs.append(text.strip())
    return docs


def _json_documents(data) -> list[str]:
    out = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and "ctxs" in item:
            out += [c["text"] for c in item["ctxs"]]
        elif isinstance(item, dict) and "text" in item:
            out.append(item["text"])
        else:
            raise ValueError("a .json file must hold strings, {\"text\": ...} or {\"ctxs\": [...]} objects")
    return list(dict.fromkeys(d for d in out if d))


def run_ingest(args: argparse.Namespace) -> int:
    import grpc

    from splitserve.api.v1 import node_pb2, node_pb2_grpc

    docs = read_documents(args.files, args.paragraphs)
    if not docs:
        print("error: no documents in the given files", file=sys.stderr)
        return 2
    chunks = tokens = 0
    with grpc.insecure_channel(args.url.removeprefix("grpc://")) as channel:
        stub = node_pb2_grpc.NodeStub(channel)
        try:
            for i in range(0, len(docs), args.batch):
                reply = stub.IngestDocuments(node_pb2.IngestRequest(documents=docs[i:i + args.batch],
                                                                    in_context=args.in_context), timeout=600)
                chunks, tokens = chunks + reply.num_chunks, tokens + reply.num_tokens
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"ingested {chunks} chunks ({tokens} tokens) from {len(docs)} documents")
    return 0
