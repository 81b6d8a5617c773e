"""Routing policies as pure functions of a node snapshot."""

import asyncio
import hashlib
import struct
from collections import Counter

import pytest

from router.cluster.holdings import BlockHoldings
from router.cluster.nodes import NodeRegistry, NodeView, parse_static_nodes
from router.cluster.policies import NoRoute, RouteRequest, SplitwiseConfig, get_policy, splitwise
from router.cluster.prefix_index import PrefixIndex, PromptHashes
from splitserve.engine.block_log import BlockChanges
from splitserve.engine.block_pool import BlockPool, block_hashes, chain_hash, kv_root, root_hash

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


# --- cache_aware ---------------------------------------------------------------------------------

PROMPT = list(range(5, 5 + 200))  # 12 full blocks of 16


def cache_request(prompt=PROMPT, **kw):
    return RouteRequest(len(prompt), 10, PromptHashes(prompt), **kw)


def test_block_hashes_equal_the_block_pools_prefix_hashes():
    pool = BlockPool(num_blocks=32, block_size=16)
    parent, pool_hashes = b"", []
    for block_id, start in zip(pool.allocate(12), range(0, 192, 16)):
        parent = pool.register_full(block_id, parent, PROMPT[start:start + 16])
        pool_hashes.append(parent)
    assert block_hashes(PROMPT, 16) == tuple(pool_hashes)
    assert block_hashes(PROMPT[:40], 16) == tuple(pool_hashes[:2])  # chained: a prefix's hashes are a prefix


def test_block_hashes_are_the_released_format():
    """blake2b-128 of the parent's hash then the block's token ids as little-endian uint32s: routers and nodes of
    different releases must agree on it (a rolling upgrade runs both)."""
    def released(parent, tokens):
        return hashlib.blake2b(parent + b"".join(t.to_bytes(4, "little") for t in tokens), digest_size=16).digest()
    tokens, root = [0, 1, 70000, 2**32 - 1] * 9, root_hash("tenant")
    expected = (released(root, tokens[:16]), released(released(root, tokens[:16]), tokens[16:32]))
    assert block_hashes(tokens, 16, root) == expected and chain_hash(root, tokens[:16]) == expected[0]
    with pytest.raises(struct.error):
        block_hashes([-1] * 16, 16)


@pytest.mark.parametrize("prompt_len,more", [(0, 40), (5, 3), (16, 0), (33, 17), (200, 64)])
def test_a_prompts_hashes_extended_by_its_output_equal_the_whole_sequences(prompt_len, more):
    hashes = PromptHashes(PROMPT[:prompt_len])
    tail = list(range(900, 900 + more))
    assert hashes.extended(tail, 16, b"r") == block_hashes(PROMPT[:prompt_len] + tail, 16, b"r")
    assert hashes.blocks(16, b"r") == block_hashes(PROMPT[:prompt_len], 16, b"r")


def test_prefix_index_matches_the_longest_routed_prefix_and_evicts_least_recent():
    index = PrefixIndex(capacity=12)
    hashes = block_hashes(PROMPT, 16)
    index.record(hashes[:4], "a")
    index.record(hashes, "b")
    assert index.matched_blocks(hashes) == {"b": 12}
    other = block_hashes([9] * 64, 16)
    index.record(other, "c")  # 4 new hashes push out the 4 oldest
    assert len(index) == 12 and index.matched_blocks(hashes) == {} and index.matched_blocks(other) == {"c": 4}


def test_cache_aware_returns_to_the_node_holding_the_prefix():
    policy = get_policy("cache_aware")
    nodes = [node("p1", "prefill"), node("p2", "prefill"), node("d1", "decode")]
    first = policy(nodes, cache_request()).prefill.address
    loaded = [node(n.address, n.role, inflight_prefill_tokens=100 if n.address == first else 0) for n in nodes]
    assert policy(loaded, cache_request(PROMPT + [7, 8, 9])).prefill.address == first  # 192 cached > 100 queued


def test_cache_aware_counts_the_blocks_a_node_reports_holding():
    """Another router replica's requests (or ones from before this router started) left the prefix on p2, which
    reports it in its Stats; this router never routed it there. Only a node that says it caches counts."""
    reported = BlockHoldings()
    reported.apply("p2-instance", BlockChanges(True, block_hashes(PROMPT, 16), (), 1))
    for caching in (True, False):
        nodes = [node("p1", "prefill", inflight_prefill_tokens=100), node("d1", "decode"),
                 node("p2", "prefill", inflight_prefill_tokens=150, holdings=reported, prefix_caching=caching)]
        chosen = get_policy("cache_aware")(nodes, cache_request(PROMPT + [7])).prefill.address
        assert chosen == ("p2" if caching else "p1")


def test_cache_aware_counts_a_lora_prompts_blocks_hashed_from_the_adapters_load_on_each_node():
    """p2 holds the prompt as run with adapter `ahoy` as loaded there (load-9): a request under the adapter counts
    it where p2 reports that load, not after a reload (another load id) or where p2 does not say; the base
    model's prompt never does."""
    reported = BlockHoldings()
    held = block_hashes(PROMPT, 16, kv_root("\x1flora:ahoy", "load-9"))
    reported.apply("p2-instance", BlockChanges(True, held, (), 1))
    lora = cache_request(PROMPT + [7], namespace="\x1flora:ahoy", lora="ahoy")
    for load_ids, request, expected in [((("ahoy", "load-9"),), lora, "p2"), ((("ahoy", "load-10"),), lora, "p1"),
                                        ((), lora, "p1"), ((("ahoy", "load-9"),), cache_request(PROMPT + [7]), "p1")]:
        nodes = [node("p1", "prefill", inflight_prefill_tokens=100), node("d1", "decode"),
                 node("p2", "prefill", inflight_prefill_tokens=150, holdings=reported, prefix_caching=True,
                      lora_load_ids=load_ids)]
        assert get_policy("cache_aware")(nodes, request).prefill.address == expected


def test_cache_aware_trades_the_hit_against_load():
    policy = get_policy("cache_aware")
    nodes = [node("p1", "prefill"), node("p2", "prefill"), node("d1", "decode")]
    first = policy(nodes, cache_request()).prefill.address
    busy = [node(n.address, n.role, num_pending_prefill_tokens=1000 if n.address == first else 0) for n in nodes]
    assert policy(busy, cache_request()).prefill.address != first


def test_cache_aware_without_hits_is_least_loaded_and_uses_chunk_keys_when_nodes_report_them():
    policy = get_policy("cache_aware")
    nodes = [node("p1", "prefill", inflight_prefill_tokens=50), node("p2", "prefill"), node("d1", "decode")]
    assert policy(nodes, cache_request([3] * 40)).prefill.address == "p2"
    keys = frozenset({"k1", "k2", "k3"})
    nodes = [node("p1", "prefill", inflight_prefill_tokens=50, chunk_keys=keys), node("p2", "prefill"),
             node("d1", "decode")]
    request = cache_request([4] * 600, chunk_keys=keys, num_chunk_tokens=500)
    assert policy(nodes, request).prefill.address == "p1"  # 425 reused tokens outweigh 50 queued


# --- splitwise -----------------------------------------------------------------------------------

def pools(prefill_pending=0, decode_free=1000, mixed=True):
    nodes = [node("p1", "prefill", inflight_prefill_tokens=prefill_pending),
             node("d1", "decode", free_blocks=decode_free, total_blocks=1000)]
    return nodes + ([node("m1", "mixed")] if mixed else [])


def test_splitwise_uses_the_pools_while_neither_is_overloaded():
    route = get_policy("splitwise")(pools(prefill_pending=2047, decode_free=200), REQ)
    assert (route.prefill.address, route.decode.address) == ("p1", "d1")


@pytest.mark.parametrize("kwargs", [dict(prefill_pending=2048), dict(decode_free=106)], ids=["prefill", "decode"])
def test_an_overloaded_pool_overflows_to_the_mixed_pool(kwargs):
    route = get_policy("splitwise")(pools(**kwargs), REQ)  # 110 tokens -> 7 blocks; 106 - 7 < 10% of 1000
    assert route.colocated and route.prefill.address == "m1"


def test_without_mixed_nodes_overloaded_pools_still_serve_and_thresholds_are_configurable():
    route = get_policy("splitwise")(pools(prefill_pending=5000, mixed=False), REQ)
    assert (route.prefill.address, route.decode.address) == ("p1", "d1")
    assert not splitwise(SplitwiseConfig(prefill_overload_tokens=10_000))(pools(prefill_pending=5000), REQ).colocated
    with pytest.raises(ValueError, match="decode_min_free_ratio"):
        SplitwiseConfig(decode_min_free_ratio=1.5)


def test_splitwise_prefers_a_decode_node_with_room():
    nodes = [node("p1", "prefill"), node("d1", "decode", free_blocks=50, total_blocks=1000),
             node("d2", "decode", inflight_decodes=4, free_blocks=800, total_blocks=1000)]
    assert get_policy("splitwise")(nodes, REQ).decode.address == "d2"


async def route_sequentially(policy_name: str, roles: dict[str, str], requests: int, loads: dict[str, int] = {}):
    """Routes `requests` one after another through a real NodeRegistry, as the orchestrator does
    (snapshot -> policy -> mark_routed), each finished before the next; the prefill counts."""
    registry = NodeRegistry()
    for address, role in roles.items():
        registry.add(role, address)
        registry._nodes[address].set_healthy(True)
    for address, tokens in loads.items():
        registry.track(address, "prefill_tokens", tokens)
    policy, counts = get_policy(policy_name), Counter()
    for _ in range(requests):
        route = policy(registry.snapshot(), REQ)
        registry.mark_routed(route.prefill.address, route.decode.address)
        counts[route.prefill.address] += 1
    await registry.close()
    return counts


@pytest.mark.parametrize("policy", ["least_loaded", "cache_aware", "splitwise"])
def test_idle_nodes_share_a_light_load(policy):
    split = {"p1": "prefill", "p2": "prefill", "d1": "decode", "d2": "decode"}
    assert asyncio.run(route_sequentially(policy, split, 10)) == {"p1": 5, "p2": 5}
    mixed = {"m1": "mixed", "m2": "mixed", "m3": "mixed"}
    assert asyncio.run(route_sequentially(policy, mixed, 9)) == {"m1": 3, "m2": 3, "m3": 3}


@pytest.mark.parametrize("policy", ["least_loaded", "cache_aware", "splitwise"])
def test_a_less_loaded_node_always_wins_the_tie_break(policy):
    split = {"p1": "prefill", "p2": "prefill", "d1": "decode", "d2": "decode"}
    assert asyncio.run(route_sequentially(policy, split, 10, loads={"p1": 1})) == {"p2": 10}
