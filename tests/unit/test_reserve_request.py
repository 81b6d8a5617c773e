"""What the router's Reserve asks of a decode node: the prompt goes along (so the node may reuse the blocks it holds
and the transfer carries the rest) only where the prefill node sends partial KV and the KV would be exact."""

import pytest

from splitserve import labels
from splitserve.engine import SamplingParams
from router.cluster.jobs import Job
from router.cluster.node_client import reserve_request
from router.cluster.nodes import NodeView
from router.cluster.policies import Route

PROMPT = list(range(10, 50))
NEW = NodeView("p:1", labels.ROLE_PREFILL, node_id="p-1", sends_partial_kv=True)
OLD = NodeView("p:2", labels.ROLE_PREFILL, node_id="p-2")  # a node of a release before partial sends (a rollout)
DECODE = NodeView("d:1", labels.ROLE_DECODE, node_id="d-1", lora_load_ids=(("ahoy", "load-7"),))
OLD_DECODE = NodeView("d:2", labels.ROLE_DECODE, node_id="d-2")  # reports no adapter loads (a release before)


def test_the_prompt_and_its_salt_go_along_to_a_prefill_node_that_sends_partial_kv():
    request = reserve_request(Job("r", PROMPT, SamplingParams(cache_salt="tenant")), Route(NEW, DECODE))
    assert (request.request_id, request.num_prompt_tokens, request.prefill_node_id) == ("r", 40, "p-1")
    assert list(request.prompt_token_ids) == PROMPT and request.cache_salt == "tenant"
    assert not request.HasField("lora")
    assert not reserve_request(Job("r", PROMPT, SamplingParams()), Route(NEW, DECODE)).HasField("cache_salt")


def test_a_lora_request_names_its_adapter_to_a_decode_node_that_reports_the_adapters_load():
    request = reserve_request(Job("r", PROMPT, SamplingParams(lora="ahoy")), Route(NEW, DECODE))
    assert list(request.prompt_token_ids) == PROMPT and request.lora == "ahoy"


@pytest.mark.parametrize("job, route", [
    (Job("r", PROMPT, SamplingParams()), Route(OLD, DECODE)),
    (Job("r", PROMPT, SamplingParams(lora="ahoy")), Route(NEW, OLD_DECODE)),
    (Job("r", PROMPT, SamplingParams(lora="other")), Route(NEW, DECODE)),
    (Job("r", PROMPT, SamplingParams(), chunks=((0, 20),)), Route(NEW, DECODE)),
], ids=["older_prefill_node", "lora_older_decode_node", "lora_not_reported", "documents"])
def test_no_prompt_where_the_whole_kv_must_move(job, route):
    request = reserve_request(job, route)
    assert request.num_prompt_tokens == 40 and not request.prompt_token_ids and not request.HasField("lora")
