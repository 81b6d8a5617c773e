"""Wires the KV transport into a node: senders on prefill nodes, a receiver on decode nodes."""

from __future__ import annotations

import argparse

from decode_node.worker import DecodeWorker
from prefill_node.worker import PrefillWorker


def build_senders(args: argparse.Namespace, engine_loop, node_id: str):
    from prefill_node.senders import SenderPool

    senders = SenderPool(node_id, timeout_s=args.transfer_timeout_s)
    worker = PrefillWorker(engine_loop, node_id, senders, one_shot_max_tokens=args.one_shot_max_tokens,
                           transfer_timeout_s=args.transfer_timeout_s, checksum=args.kv_checksum)
    return worker, senders.close


def build_receiver(args: argparse.Namespace, engine_loop, node_id: str, server, grpc_address: str):
    from splitserve.kvtransfer import make_receiver

    receiver = make_receiver(args.transport, node_id=node_id, host=args.host, port=args.kv_port,
                             grpc_server=server.server, timeout_s=args.transfer_timeout_s)
    kv_address = grpc_address if args.transport == "grpc" else f"{args.advertise_host or args.host}:{receiver.port}"
    worker = DecodeWorker(engine_loop, node_id, receiver, kv_address, args.transport,
                          transfer_timeout_s=args.transfer_timeout_s, checksum=args.kv_checksum)
    return worker, receiver.close
