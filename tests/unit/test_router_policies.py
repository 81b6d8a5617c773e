"""Routing policies as pure functions of a node snapshot."""

import pytest

from router.nodes import NodeView, parse_static_nodes
from router.policies import NoRoute, RouteRequest, get_policy

REQ = RouteRequest(num_prompt_tokens=100, max_tokens=10)


def node(address, role, **kw):
    return NodeView(address=address, role=role, healthy=kw.pop("healthy", True), **kw)


def test_least_loaded_pairs_the_least_busy_prefill_and_decode():
    nodes = [
        node("p1", "prefill", inflight_prefill_tokens=900), node("p2", "prefill", inflight_prefill_tokens=100),
        node("d1", "decode", inflight_decodes=3, free_blocks=100), node("d2", "decode", inflight_decodes=3, free_blocks=500),
        node("d3", "decode", inflight_decodes=5, free_blocks=900),
    ]
    route = get_policy("least_loaded")(nodes, REQ)
    assert (route.prefill.address, route.decode.address) == ("p2", "d2")
    assert not route.colocated


def test_unhealthy_nodes_are_skipped_and_mixed_nodes_take_both_phases():
    nodes = [node("p1", "prefill", healthy=False), node("d1", "decode"),
             node("m1", "mixed", inflight_decodes=2), node("m2", "mixed")]
    route = get_policy("least_loaded")(nodes, REQ)
    assert route.colocated and route.prefill.address == "m2"


def test_no_healthy_pair_is_no_route():
    with pytest.raises(NoRoute):
        get_policy("least_loaded")([node("p1", "prefill"), node("d1", "decode", healthy=False)], REQ)


def test_round_robin_cycles_in_address_order():
    nodes = [node("p2", "prefill"), node("p1", "prefill"), node("d1", "decode")]
    policy = get_policy("round_robin")
    assert [policy(nodes, REQ).prefill.address for _ in range(3)] == ["p1", "p2", "p1"]


def test_unknown_policy_lists_the_names():
    with pytest.raises(KeyError, match="least_loaded"):
        get_policy("fastest")


def test_static_node_list_parsing():
    assert parse_static_nodes("prefill=a:1, decode=b:2,mixed=c:3") == [("prefill", "a:1"), ("decode", "b:2"), ("mixed", "c:3")]
    with pytest.raises(ValueError, match="ROLE=HOST:PORT"):
        parse_static_nodes("gpu=a:1")
