"""A node that stops serving a LoRA adapter while the router still lists it there (its Stats are a moment old: the
adapter was unloaded, or the node restarted without it) answers NOT_FOUND, and the router sends the request to a
node that still serves it; when none does, the client gets the 404 of an unknown model. Real processes: 1 prefill
+ 2 decode nodes, round robin, health checks every 30 s so the router's view stays stale, the official `openai`
client."""

from __future__ import annotations

import openai
import pytest

from splitserve.api.v1 import node_pb2
from tests.support.cluster import ParallelCluster, node_stats, node_stub
from tests.support.lora import write_peft_adapter
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.slow
LORA = "tiny-lora"
PROMPT = "The history of the river"


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    lora = write_peft_adapter(tiny_model, tmp_path_factory.mktemp("lora") / LORA, seed=3)
    with ParallelCluster(tiny_model, prefill=1, decode=2, http_port=-1, policy="round_robin",
                         node_args=["--lora-modules", f"{LORA}={lora}"], router_args=["--health-interval-s=30"]) as c:
        yield c


def unload_behind_the_routers_back(address: str) -> None:
    assert list(node_stats(address).startup_lora_adapters) == [LORA]  # from its flags
    channel, stub = node_stub(address)
    with channel:
        stub.UnloadLoraAdapter(node_pb2.LoraAdapterRequest(name=LORA), timeout=10)
    stats = node_stats(address)
    assert LORA not in stats.lora_adapters and not stats.startup_lora_adapters


def test_a_node_that_no_longer_serves_the_adapter_sends_the_request_elsewhere(cluster):
    api = openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def answer() -> str:
        return api.completions.create(model=LORA, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text

    before = answer()
    first, second = [n.address for role, n in cluster.nodes if role == "decode"]
    unload_behind_the_routers_back(first)
    assert [answer() for _ in range(4)] == [before] * 4  # round robin: two of them were routed to `first`
    metrics = scrape(cluster.router.extra["http"] + "/metrics")
    assert value(metrics, "splitserve_router_node_call_errors_total", call="Reserve", code="NOT_FOUND") >= 2
    unload_behind_the_routers_back(second)
    with pytest.raises(openai.NotFoundError, match=f"unknown LoRA adapter '{LORA}'"):
        answer()
    assert api.completions.create(model=cluster.model.name, prompt=PROMPT, max_tokens=4).choices[0].text
