"""Conditional disaggregation (the router's --max-local-prefill-tokens, Dynamo's): with real processes, a prompt of at
most that many tokens runs whole on the decode node the policy chose (no Reserve, no Prefill, no KV transfer), a
longer one goes through the prefill node; both equal the single-process engine token for token."""

import asyncio
import random
import time

import pytest

from splitserve.client import Client
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.localcluster.procs import kill, stop
from tests.support.cluster import (
    ParallelCluster,
    mixed_prompts,
    node_stats,
    reference,
    send_all,
    used_blocks_settle_to_zero,
    wait_until,
)
from tests.support.lora import write_peft_adapter
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.slow
LOCAL = 32  # prompts up to this many tokens are prefilled on their decode node


@pytest.fixture(scope="module")
def cluster(tiny_model):
    with ParallelCluster(tiny_model, prefill=1, decode=1, http_port=-1,
                         router_args=["--max-local-prefill-tokens", str(LOCAL)]) as c:
        yield c


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_short_prompts_run_on_the_decode_node_and_long_ones_are_split(cluster, tiny_model, seeded):
    decode = next(n.address for role, n in cluster.nodes if role == "decode")
    prompts = mixed_prompts(16, seed=3 + seeded)  # not the other case's: the decode node holds those now
    before = value(scrape(cluster.router.extra["http"] + "/metrics"), "splitserve_router_local_prefills_total")
    results = asyncio.run(send_all(cluster.url, prompts, seeded))
    assert [r.token_ids for r in results] == reference(tiny_model, prompts, seeded)
    for prompt, result in zip(prompts, results):
        local = len(prompt) <= LOCAL
        assert (result.final.prefill_node == result.final.decode_node == decode) == local, len(prompt)
        assert result.final.decode_node == decode
    after = value(scrape(cluster.router.extra["http"] + "/metrics"), "splitserve_router_local_prefills_total")
    assert after - before == sum(len(p) <= LOCAL for p in prompts) > 0
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address)


def test_a_short_prompt_with_documents_still_goes_to_the_prefill_node(cluster):
    """Documents are prefilled where the chunk cache is: the prefill node (here without Redis: computed exactly)."""
    with Client(cluster.url, timeout_s=60) as client:
        result = client.complete(prompt="Why?", documents=["A short passage."], max_tokens=4)
    assert result.final.prefill_node != result.final.decode_node



def test_the_next_turn_runs_on_the_decode_node_that_holds_the_conversation(cluster, tiny_model):
    """A long first turn is split; the second repeats it with the answer and adds a few tokens: only those are
    left to compute on the decode node, which holds the rest in its prefix cache, so it runs there (its prompt
    cached), equal to the single-process engine; a third that adds too much is split again."""
    decode = next(n.address for role, n in cluster.nodes if role == "decode")
    rng = random.Random(11)
    first = [rng.randrange(5, 1000) for _ in range(3 * LOCAL + 5)]
    with Client(cluster.url, timeout_s=60) as client:
        turn1 = client.complete(prompt_token_ids=first, max_tokens=12, ignore_eos=True)
        second = first + turn1.token_ids + [5, 6, 7, 8]
        turn2 = client.complete(prompt_token_ids=second, max_tokens=12, ignore_eos=True)
        third = second + turn2.token_ids + list(range(10, 10 + 2 * LOCAL))
        turn3 = client.complete(prompt_token_ids=third, max_tokens=4, ignore_eos=True)
    assert turn1.final.prefill_node != turn1.final.decode_node == decode
    assert turn2.final.prefill_node == turn2.final.decode_node == decode
    assert turn2.final.cached_tokens >= len(first)
    assert turn3.final.prefill_node != turn3.final.decode_node
    expected = Engine(tiny_model).generate([first, second, third], [SamplingParams(max_tokens=n, ignore_eos=True)
                                                                    for n in (12, 12, 4)])
    assert [turn1.token_ids, turn2.token_ids, turn3.token_ids] == [r.token_ids for r in expected]


@pytest.mark.parametrize("router_args", [["--max-local-prefill-tokens", str(LOCAL)], [], ["--no-decode-affinity"]],
                         ids=["local_prefill", "default", "no_affinity"])
def test_a_long_next_turn_goes_split_to_the_decode_node_holding_the_conversation(tiny_model, router_args):
    """1 prefill + 2 decode nodes: turn 2 adds too much to run locally, so it is split, but to the decode node that
    decoded turn 1 (least_loaded alone would pick the other, as idle and less recently routed, and does with
    --no-decode-affinity), whose Reserve takes turn 1's blocks from its prefix cache; the tokens are the
    single-process engine's."""
    rng = random.Random(12)
    first = [rng.randrange(5, 1000) for _ in range(3 * LOCAL + 5)]
    with ParallelCluster(tiny_model, prefill=1, decode=2, http_port=-1, router_args=router_args) as c, \
            Client(c.url, timeout_s=60) as client:
        turn1 = client.complete(prompt_token_ids=first, max_tokens=12, ignore_eos=True)
        second = first + turn1.token_ids + list(range(10, 10 + 2 * LOCAL))
        turn2 = client.complete(prompt_token_ids=second, max_tokens=6, ignore_eos=True)
        routes = value(scrape(c.router.extra["http"] + "/metrics"), "splitserve_router_decode_affinity_routes_total")
    affinity = "--no-decode-affinity" not in router_args
    assert turn1.final.prefill_node != turn1.final.decode_node
    assert turn2.final.prefill_node != turn2.final.decode_node
    assert (turn2.final.decode_node == turn1.final.decode_node) == affinity
    assert routes == affinity
    expected = Engine(tiny_model).generate([first, second],
                                           [SamplingParams(max_tokens=n, ignore_eos=True) for n in (12, 6)])
    assert [turn1.token_ids, turn2.token_ids] == [r.token_ids for r in expected]


def held_blocks(router_http: str, node: str) -> float:
    return value(scrape(router_http + "/metrics"), "splitserve_router_node_kv_blocks_held", node=node, role="decode")


def test_another_router_replica_sends_the_next_turn_where_the_conversation_is(tiny_model):
    """Two router replicas over 1 prefill + 2 decode nodes. Router B routes a one-block request first, so its
    least_loaded would send the next one to the other decode node; turn 1 goes through router A, and turn 2 (too
    long to run locally: split) through router B, which knows where turn 1 is only from the decode nodes' reports
    of their prefix caches (NodeStats.kv_blocks): it goes to turn 1's decode node."""
    rng = random.Random(13)
    first = [rng.randrange(5, 1000) for _ in range(3 * LOCAL + 5)]
    with ParallelCluster(tiny_model, prefill=1, decode=2, http_port=-1) as c, Client(c.url, timeout_s=60) as a:
        replica = c.start_router()
        try:
            with Client(replica.address, timeout_s=60) as b:
                warm = b.complete(prompt_token_ids=[7, 8, 9], max_tokens=2, ignore_eos=True)
                decodes = [s.address for role, s in c.nodes if role == "decode"]
                assert wait_until(lambda: all(node_stats(d).num_running == 0 for d in decodes), 10)
                time.sleep(1.0)  # two health intervals: router A sees both decode nodes idle, as they are
                turn1 = a.complete(prompt_token_ids=first, max_tokens=12, ignore_eos=True)
                block_size = node_stats(turn1.final.decode_node).block_size
                held = (len(first) + len(turn1.token_ids) - 1) // block_size
                assert wait_until(lambda: held_blocks(replica.extra["http"], turn1.final.decode_node) >= held, 10)
                second = first + turn1.token_ids + list(range(10, 10 + 2 * LOCAL))
                turn2 = b.complete(prompt_token_ids=second, max_tokens=6, ignore_eos=True)
        finally:
            stop([replica])
    assert warm.final.decode_node == turn1.final.decode_node  # so router B's own choice was the other node
    assert turn2.final.prefill_node != turn2.final.decode_node == turn1.final.decode_node


def test_a_restarted_decode_node_holds_nothing_in_the_routers_view(tiny_model):
    """The router counts the blocks a turn left on its decode node; when that node dies and comes back (a new
    instance, an empty pool), its first report replaces what the router counted, so routing stops counting on the
    lost conversation; the next turn runs there from scratch."""
    rng = random.Random(14)
    first = [rng.randrange(5, 1000) for _ in range(3 * LOCAL + 5)]
    with ParallelCluster(tiny_model, prefill=1, decode=1, http_port=-1) as c, Client(c.url, timeout_s=60) as client:
        turn1 = client.complete(prompt_token_ids=first, max_tokens=12, ignore_eos=True)
        router_http, decode = c.router.extra["http"], next(s for role, s in c.nodes if role == "decode")
        assert wait_until(lambda: held_blocks(router_http, decode.address) > 0, 10)
        kill(decode)
        decode.proc.wait(timeout=10)
        fresh = c.restart_node(decode)
        assert wait_until(lambda: held_blocks(router_http, fresh.address) == 0, 30)
        turn2 = client.complete(prompt_token_ids=first + turn1.token_ids + [5, 6, 7], max_tokens=4, ignore_eos=True)
    assert turn2.final.decode_node == fresh.address and len(turn2.token_ids) == 4


def test_a_lora_conversations_next_turn_moves_only_the_kv_its_decode_node_lacks(tiny_model, tmp_path):
    """1 prefill + 2 decode nodes serving a LoRA adapter (each its own load): turn 2 of a conversation under the
    adapter goes split to the decode node turn 1 left its blocks on (it reports the adapter's load id, so the router
    hashes the prompt as that node does), whose Reserve takes them: the KV received for turn 2 is that of the tokens
    after turn 1 alone. The tokens are the single-process engine's with the adapter."""
    adapter = write_peft_adapter(tiny_model, tmp_path / "ahoy", seed=6)
    rng = random.Random(15)
    first = [rng.randrange(5, 1000) for _ in range(3 * LOCAL + 5)]
    params = dict(max_tokens=12, ignore_eos=True, lora="ahoy")
    with ParallelCluster(tiny_model, prefill=1, decode=2, http_port=-1,
                         node_args=["--lora-modules", f"ahoy={adapter}", "--metrics-port=-1"]) as c, \
            Client(c.url, timeout_s=60) as client:
        turn1 = client.complete(prompt_token_ids=first, **params)
        decode = next(n for role, n in c.nodes if n.address == turn1.final.decode_node)
        received = kv_bytes_received(decode)
        assert wait_until(lambda: held_blocks(c.router.extra["http"], decode.address) > 0, 10)
        second = first + turn1.token_ids + list(range(10, 10 + 2 * LOCAL))
        turn2 = client.complete(prompt_token_ids=second, **params)
        turn2_bytes = kv_bytes_received(decode) - received
    assert turn1.final.prefill_node != turn1.final.decode_node
    assert turn2.final.prefill_node != turn2.final.decode_node == decode.address
    held = (len(first) + len(turn1.token_ids) - 1) // 16 * 16
    assert turn2_bytes == (len(second) - held) * received / len(first)
    engine = Engine(tiny_model, EngineConfig(lora_modules=(("ahoy", str(adapter)),)))
    expected = engine.generate([first, second], SamplingParams(**params))
    assert [turn1.token_ids, turn2.token_ids] == [r.token_ids for r in expected]


def kv_bytes_received(node) -> float:
    return value(scrape(f"http://{node.extra['metrics']}/metrics"), "splitserve_kv_transfer_bytes_total",
                 direction="receive")
