"""`KVTarget` to and from its protobuf message (torch-free: the router uses it too)."""

from __future__ import annotations

from splitserve.api.v1 import node_pb2
from splitserve.node_api import KVTarget, PostedRecvs


def kv_target_to_proto(target: KVTarget) -> node_pb2.KVTarget:
    msg = node_pb2.KVTarget(node_id=target.node_id, kv_address=target.kv_address, transport=target.transport)
    if target.posted is not None:
        p = target.posted
        msg.posted.CopyFrom(node_pb2.PostedRecvs(tag=p.tag, num_layers=p.num_layers, layer_bytes=p.layer_bytes,
                                                 layers_per_message=p.layers_per_message, num_messages=p.num_messages))
    return msg


def kv_target_from_proto(msg: node_pb2.KVTarget) -> KVTarget:
    """ValueError (-> INVALID_ARGUMENT) for receives posted ahead on a tag no decode node hands out or in
    a layout that is none."""
    p = msg.posted
    posted = (PostedRecvs(p.tag, p.num_layers, p.layer_bytes, p.layers_per_message, p.num_messages)
              if msg.HasField("posted") else None)
    return KVTarget(msg.node_id, msg.kv_address, msg.transport, posted)
