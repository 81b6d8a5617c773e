"""Wires the KV transport into a node: senders on prefill nodes, a receiver on decode nodes."""

from __future__ import annotations

import argparse

from decode_node.worker import DecodeWorker
from prefill_node.senders import SenderPool
from prefill_node.worker import PrefillWorker
from splitserve.kvtransfer import TransferConfig, make_receiver


def transfer_config(args: argparse.Namespace) -> TransferConfig:
    return TransferConfig(timeout_s=args.transfer_timeout_s, device=args.device if args.device.startswith("cuda") else "cpu")


def build_senders(args: argparse.Namespace, engine_loop, node_id: str, credentials=None):
    senders = SenderPool(node_id, transfer_config(args), credentials)
    worker = PrefillWorker(engine_loop, node_id, senders, one_shot_max_tokens=args.one_shot_max_tokens,
                           transfer_timeout_s=args.transfer_timeout_s, checksum=args.kv_checksum,
                           fault_send_delay_s=args.fault_kv_send_delay_s)
    return worker, senders.close


def build_receiver(args: argparse.Namespace, engine_loop, node_id: str, server, grpc_address: str):
    """torch: a rendezvous store on --kv-port; grpc: the KVTransfer service on the node's own server."""
    config = transfer_config(args)
    if args.transport == "grpc":
        receiver = make_receiver("grpc", config, grpc_server=server.server)
        kv_address = grpc_address
    else:
        receiver = make_receiver("torch", config, host=args.host, port=args.kv_port)
        kv_address = f"{args.advertise_host or args.host}:{receiver.address.rsplit(':', 1)[1]}"
    worker = DecodeWorker(engine_loop, node_id, receiver, kv_address, args.transport,
                          transfer_timeout_s=args.transfer_timeout_s, checksum=args.kv_checksum)
    return worker, receiver.close
