"""What the router's Reserve asks of a decode node: the prompt goes along (so the node may reuse the blocks it holds
and the transfer carries the rest) only where the prefill node sends partial KV and the KV would be exact."""

import pytest

from splitserve import labels
from splitserve.engine import SamplingParams
from router.cluster.jobs import Job
from router.cluster.node_client import reserve_request
from router.cluster.nodes import NodeView

PROMPT = list(range(10, 50))
NEW = NodeView("p:1", labels.ROLE_PREFILL, node_id="p-1", sends_partial_kv=True)
OLD = NodeView("p:2", labels.ROLE_PREFILL, node_id="p-2")  # a node of a release before partial sends (a rollout)


def test_the_prompt_and_its_salt_go_along_to_a_prefill_node_that_sends_partial_kv():
    request = reserve_request(Job("r", PROMPT, SamplingParams(cache_salt="tenant")), NEW)
    assert (request.request_id, request.num_prompt_tokens, request.prefill_node_id) == ("r", 40, "p-1")
    assert list(request.prompt_token_ids) == PROMPT and request.cache_salt == "tenant"
    assert not reserve_request(Job("r", PROMPT, SamplingParams()), NEW).HasField("cache_salt")


@pytest.mark.parametrize("job, prefill", [
    (Job("r", PROMPT, SamplingParams()), OLD),
    (Job("r", PROMPT, SamplingParams(lora="ahoy")), NEW),
    (Job("r", PROMPT, SamplingParams(), chunks=((0, 20),)), NEW),
], ids=["older_prefill_node", "lora", "documents"])
def test_no_prompt_where_the_whole_kv_must_move(job, prefill):
    request = reserve_request(job, prefill)
    assert request.num_prompt_tokens == 40 and not request.prompt_token_ids
