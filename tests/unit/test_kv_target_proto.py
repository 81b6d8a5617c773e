"""A reservation's KV target, receives posted ahead included, through its protobuf message."""

from __future__ import annotations

import pytest

from splitserve.api.v1 import node_pb2
from splitserve.node_api import KVTarget, PostedRecvs
from splitserve.rpc.kv_target import kv_target_from_proto, kv_target_to_proto


@pytest.mark.parametrize("posted", [None, PostedRecvs(4242, 30, 27648, 7, 4)])
def test_a_target_round_trips(posted):
    target = KVTarget("decode-0", "127.0.0.1:7000", "torch", posted)
    wire = node_pb2.KVTarget.FromString(kv_target_to_proto(target).SerializeToString())
    assert kv_target_from_proto(wire) == target


@pytest.mark.parametrize("fields", [dict(tag=3, num_layers=30, layer_bytes=1, layers_per_message=1, num_messages=1),
                                    dict(tag=99, num_layers=30, layer_bytes=1, layers_per_message=0, num_messages=1),
                                    dict(tag=99)])
def test_receives_posted_ahead_no_decode_node_would_post_are_bad_input(fields):
    message = node_pb2.KVTarget(node_id="d", kv_address="127.0.0.1:1", transport="torch",
                                posted=node_pb2.PostedRecvs(**fields))
    with pytest.raises(ValueError):
        kv_target_from_proto(message)
