"""Runtime LoRA adapters shared by two router replicas through a real redis-server (`--lora-store redis://...`),
tiny model, 1 prefill + 1 decode node, the official `openai` client: an adapter loaded through one replica answers
through the other; once the replica that loaded it has stopped, a node that restarts gets it back from the one left
(which never loaded it itself); unloaded through that one, a node that loads it again behind the routers' backs
(what a load racing the unload leaves) is made to unload it."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from splitserve.api.v1 import node_pb2
from splitserve.localcluster.procs import kill, stop
from tests.integration.test_openai_http import post
from tests.support.cluster import ParallelCluster, node_stats, node_stub, wait_until

pytestmark = pytest.mark.slow
PROMPT = "The history of the river"
PEFT = Path(__file__).resolve().parent.parent / "data" / "lora" / "tiny" / "peft"


@pytest.fixture(scope="module")
def cluster(tiny_model, redis_server):
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    args = ["--allow-runtime-lora", "--lora-store", redis_server.url]
    with ParallelCluster(tiny_model, prefill=1, decode=1, http_port=-1, router_args=args) as c:
        yield c


def answer(url: str) -> str | None:
    """The adapter's greedy answer through the router at `url`; None while that router does not route it yet."""
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        try:
            return client.completions.create(model="shared", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
        except (openai.NotFoundError, openai.InternalServerError):
            return None


def test_replicas_share_the_runtime_adapters_through_redis(cluster):
    second = cluster.start_router()
    try:
        load = second.extra["http"] + "/v1/load_lora_adapter"
        assert post(load, {"lora_name": "shared", "lora_path": str(PEFT)})[0] == 200
        before = answer(second.extra["http"])
        assert before is not None
        assert wait_until(lambda: answer(cluster.http_url) is not None, timeout_s=10, interval_s=0.2)
        assert answer(cluster.http_url) == before
    finally:
        stop([second])
    decode = next(s for r, s in cluster.nodes if r == "decode")
    kill(decode)
    decode.proc.wait(timeout=10)
    fresh = cluster.restart_node(decode)
    assert wait_until(lambda: "shared" in node_stats(fresh.address).lora_adapters, timeout_s=30)
    assert wait_until(lambda: answer(cluster.http_url) is not None, timeout_s=30, interval_s=0.5)
    assert answer(cluster.http_url) == before

    assert post(cluster.http_url + "/v1/unload_lora_adapter", {"lora_name": "shared"})[0] == 200
    assert all("shared" not in node_stats(s.address).lora_adapters for _, s in cluster.nodes)
    channel, stub = node_stub(fresh.address)
    with channel:
        stub.LoadLoraAdapter(node_pb2.LoraAdapterRequest(name="shared", path=str(PEFT)), timeout=30)
    assert "shared" in node_stats(fresh.address).lora_adapters
    assert wait_until(lambda: "shared" not in node_stats(fresh.address).lora_adapters, timeout_s=10)
    assert answer(cluster.http_url) is None
