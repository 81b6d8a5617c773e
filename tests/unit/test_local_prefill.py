"""Conditional disaggregation's decision (router/cluster/local_prefill.py): which requests run whole on a decode node,
counting what that node holds from the requests that finished there."""

from dataclasses import replace

import pytest

from splitserve import labels
from splitserve.engine import SamplingParams
from splitserve.engine.block_pool import block_hashes
from router.cluster.jobs import Job
from router.cluster.holdings import BlockHoldings
from router.cluster.local_prefill import LocalPrefill
from router.cluster.nodes import NodeView
from router.cluster import prefix_index
from router.cluster.orchestrator import Orchestrator
from router.cluster.policies import Route, get_policy

BLOCK = 4
PREFILL = NodeView("p:1", labels.ROLE_PREFILL, healthy=True, total_blocks=64, block_size=BLOCK, prefix_caching=True)
A = NodeView("a:1", labels.ROLE_DECODE, healthy=True, total_blocks=64, block_size=BLOCK, prefix_caching=True)
B = NodeView("b:1", labels.ROLE_DECODE, healthy=True, total_blocks=64, block_size=BLOCK, prefix_caching=True)
NODES = [PREFILL, A, B]
POLICY_ROUTE = Route(PREFILL, A)  # what the routing policy chose


@pytest.fixture(autouse=True)
def nothing_held():
    """Fresh nodes for each test: what a node holds lives on its view (NodeView.holdings)."""
    global PREFILL, A, B, NODES, POLICY_ROUTE
    PREFILL, A, B = (replace(node, holdings=BlockHoldings()) for node in (PREFILL, A, B))
    NODES, POLICY_ROUTE = [PREFILL, A, B], Route(PREFILL, A)


def job(tokens, **params) -> Job:
    return Job("r", list(tokens), SamplingParams(max_tokens=8, **params))


def finished_on(local: LocalPrefill, node: NodeView, prompt, sent, **params) -> None:
    local.record(job(prompt, **params), list(sent), Route(PREFILL, node))


def test_off_keeps_the_policys_route():
    assert LocalPrefill(0).route(job(range(3)), POLICY_ROUTE, NODES) is POLICY_ROUTE


def test_without_local_prefill_a_next_turn_goes_split_to_the_decode_node_holding_the_conversation():
    routing = LocalPrefill(0)
    first = list(range(100, 140))
    finished_on(routing, B, first, [1, 2, 3])
    assert routing.route(job(first + [1, 2, 7]), POLICY_ROUTE, NODES) == Route(PREFILL, B)
    assert routing.route(job(range(500, 540)), POLICY_ROUTE, NODES) is POLICY_ROUTE  # held nowhere


def test_no_decode_affinity_keeps_the_policys_decode_node_for_split_requests():
    first = list(range(100, 140))
    for routing in LocalPrefill(0, affinity=False), LocalPrefill(8, affinity=False):
        finished_on(routing, B, first, [1, 2, 3])
        assert routing.route(job(first + [1, 2] + list(range(300, 330))), POLICY_ROUTE, NODES) is POLICY_ROUTE
    assert routing.route(job(first + [1, 2, 7]), POLICY_ROUTE, NODES) == Route(B, B)  # local prefill still counts it


def test_a_short_prompt_runs_on_the_policys_decode_node_and_a_long_one_is_split():
    local = LocalPrefill(8)
    assert local.route(job(range(8)), POLICY_ROUTE, NODES) == Route(A, A)
    assert local.route(job(range(9)), POLICY_ROUTE, NODES) is POLICY_ROUTE


def test_the_next_turn_of_a_conversation_runs_where_the_earlier_turns_are_held():
    local = LocalPrefill(8)
    first, answer = list(range(100, 140)), list(range(200, 210))
    finished_on(local, B, first, answer)
    # 40 prompt + 9 fed-back answer tokens = 12 full blocks held on B; the next turn adds 6 tokens
    second = first + answer + [7, 8, 9, 10, 11, 12]
    assert local.route(job(second), POLICY_ROUTE, NODES) == Route(B, B)
    assert local.route(job(second + list(range(300, 310))), POLICY_ROUTE, NODES) == Route(PREFILL, B)  # 18: split
    assert local.route(job([1] + second), POLICY_ROUTE, NODES) is POLICY_ROUTE  # another prefix: no hit


@pytest.mark.parametrize("params", [{"lora": "ahoy"}, {"prompt_logprobs": 1}, {"cache_salt": "tenant-2"}],
                         ids=["lora_base_turn", "prompt_logprobs", "other_salt"])
def test_hits_do_not_count_where_the_node_would_not_reuse_them(params):
    local = LocalPrefill(8)
    prompt = list(range(100, 140))
    finished_on(local, B, prompt, [1, 2, 3])
    assert local.route(job(prompt + [5], **params), POLICY_ROUTE, NODES) is POLICY_ROUTE


@pytest.mark.parametrize("slack, busier, holder_wins", [(0, 0, True), (0, 1, False), (3, 3, True), (3, 4, False)])
def test_the_decode_affinity_slack_bounds_how_much_busier_the_holder_may_be(slack, busier, holder_wins):
    """--decode-affinity-slack: the holder takes the split request while it runs at most `slack` more requests."""
    local, first = LocalPrefill(0, slack=slack), list(range(100, 140))
    finished_on(local, B, first, [1, 2, 3])
    busy = replace(B, inflight_decodes=busier)
    route = local.route(job(first + [1, 2] + list(range(300, 330))), POLICY_ROUTE, [PREFILL, A, busy])
    assert (route == Route(PREFILL, busy)) == holder_wins


def test_a_negative_decode_affinity_slack_is_refused():
    with pytest.raises(ValueError, match="slack must be >= 0"):
        LocalPrefill(0, slack=-1)


def test_a_lora_conversation_counts_on_the_node_reporting_the_adapters_load_and_nowhere_else():
    """A LoRA request's blocks hash from the adapter's load on each node (NodeStats.lora_load_ids): its next turn
    runs where the last one left them; the same node without the load reported, or after a reload, counts none."""
    holder = replace(B, lora_load_ids=(("ahoy", "load-1"),))
    local, prompt = LocalPrefill(8), list(range(100, 140))
    finished_on(local, holder, prompt, [1, 2, 3], lora="ahoy")
    nodes = [PREFILL, A, holder]
    assert local.route(job(prompt + [1, 2, 5], lora="ahoy"), POLICY_ROUTE, nodes) == Route(holder, holder)
    assert local.route(job(prompt + [1, 2, 5]), POLICY_ROUTE, nodes) is POLICY_ROUTE  # the base model's prompt
    for reloaded in (replace(holder, lora_load_ids=()), replace(holder, lora_load_ids=(("ahoy", "load-2"),))):
        assert local.route(job(prompt + [1, 2, 5], lora="ahoy"), POLICY_ROUTE, [PREFILL, A, reloaded]) is POLICY_ROUTE


def test_a_node_without_a_prefix_cache_holds_nothing():
    no_cache = NodeView("b:1", labels.ROLE_DECODE, healthy=True, total_blocks=64, block_size=BLOCK)
    local = LocalPrefill(8)
    prompt = list(range(100, 140))
    finished_on(local, no_cache, prompt, [1, 2, 3])
    assert local.route(job(prompt + [5]), POLICY_ROUTE, [PREFILL, A, no_cache]) is POLICY_ROUTE


def test_documents_and_unhealthy_holders_keep_the_policys_route():
    local = LocalPrefill(8)
    prompt = list(range(100, 140))
    finished_on(local, B, prompt, [1, 2, 3])
    with_documents = Job("r", prompt + [5], SamplingParams(max_tokens=8), chunks=((0, 20),))
    assert local.route(with_documents, POLICY_ROUTE, NODES) is POLICY_ROUTE
    down = replace(B, healthy=False)
    assert local.route(job(prompt + [5]), POLICY_ROUTE, [PREFILL, A, down]) is POLICY_ROUTE


def test_a_request_that_ended_with_the_prefills_token_left_nothing_on_the_decode_node():
    local = LocalPrefill(8)
    prompt = list(range(100, 140))
    finished_on(local, B, prompt, [1])
    assert local.route(job(prompt + [5]), POLICY_ROUTE, NODES) is POLICY_ROUTE


def test_the_guess_forgets_what_no_longer_fits_the_nodes_pool():
    small = NodeView("b:1", labels.ROLE_DECODE, healthy=True, total_blocks=12, block_size=BLOCK, prefix_caching=True)
    local = LocalPrefill(8)
    old, new = list(range(100, 140)), list(range(500, 540))
    finished_on(local, small, old, [1, 2])
    finished_on(local, small, new, [1, 2])  # 10 more blocks: the 12-block pool cannot hold both
    nodes = [PREFILL, A, small]
    assert local.route(job(new + [5]), POLICY_ROUTE, nodes) == Route(small, small)
    assert local.route(job(old + [5]), POLICY_ROUTE, nodes) is POLICY_ROUTE


def test_a_turn_with_too_much_new_stays_split_but_goes_to_the_decode_node_holding_the_rest():
    local = LocalPrefill(8)
    first = list(range(100, 140))
    finished_on(local, B, first, [1, 2, 3])
    long_turn = job(first + [1, 2] + list(range(300, 330)))
    assert local.route(long_turn, POLICY_ROUTE, NODES) == Route(PREFILL, B)
    busy = replace(B, inflight_decodes=3)  # more than AFFINITY_SLACK beyond the policy's idle choice
    assert local.route(long_turn, POLICY_ROUTE, [PREFILL, A, busy]) is POLICY_ROUTE
    assert local.route(job(range(500, 540)), POLICY_ROUTE, NODES) is POLICY_ROUTE  # held nowhere


def test_a_request_hashes_its_prompt_once_across_policy_affinity_and_record(monkeypatch):
    """cache_aware, decode affinity and the record at the end share the job's hashes: the router's event loop hashes
    the prompt once, and at the end only what follows its full blocks."""
    hashed = []

    def counting(token_ids, block_size, root=b""):
        hashed.append(len(token_ids))
        return block_hashes(token_ids, block_size, root)
    monkeypatch.setattr(prefix_index, "block_hashes", counting)
    local, prompt, sent = LocalPrefill(0), list(range(100, 143)), [1, 2, 3, 4, 5]
    finished_on(local, B, prompt[:20], [9, 9])
    hashed.clear()
    request = job(prompt)
    route = local.route(request, get_policy("cache_aware")(NODES, Orchestrator.route_request(request)), NODES)
    local.record(request, sent, route)
    assert route.decode is B and hashed == [43, 43 % BLOCK + len(sent) - 1]
