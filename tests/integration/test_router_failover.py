"""Failover with real processes: a node killed mid-request costs the client nothing but latency.

One cluster (3 prefill, 3 decode) serves the whole module, in order: metrics first, then nodes
die one by one. Engines sleep after each step (--fault-step-delay-s) so that a stream lasts
long enough to kill its decode node after 5 tokens; prefill nodes sleep before each KV layer
send (--fault-kv-send-delay-s) so that a prefill can be killed before it answers. Outputs must
equal the single-process engine's, greedy and seeded (the re-dispatched continuation draws
token n from (seed, n) as the first node would have).
"""

import collections
import functools
import threading
import time

import grpc
import pytest

from node.prefix_metrics import PrefixStoreCollector
from splitserve.client import Client
from splitserve.localcluster.procs import kill
from tests.support.cluster import ParallelCluster, node_stats, request_kwargs, used_blocks_settle_to_zero, wait_until
from tests.support.lora import write_peft_adapter
from tests.support.metrics import exported_names, scrape, value

pytestmark = pytest.mark.slow
PROMPT = list(range(20, 60))
NUM_TOKENS = 24
NODE_ARGS = ["--fault-step-delay-s=0.05", "--fault-kv-send-delay-s=0.4", "--one-shot-max-tokens=0",
             "--transfer-timeout-s=5", "--metrics-port=-1"]
ROUTER_ARGS = ["--http-port=-1", "--health-interval-s=0.2"]


LORA = "tiny-lora"  # the seeded requests run this adapter: a continuation elsewhere must run it too


@pytest.fixture(scope="module")
def lora(tiny_model, tmp_path_factory):
    return write_peft_adapter(tiny_model, tmp_path_factory.mktemp("lora") / LORA, seed=5)


@pytest.fixture(scope="module")
def cluster(tiny_model, lora):
    with ParallelCluster(tiny_model, prefill=3, decode=3, node_args=NODE_ARGS + ["--lora-modules", f"{LORA}={lora}"],
                         router_args=ROUTER_ARGS) as c:
        yield c


def kwargs(seeded: bool) -> dict:
    return {**request_kwargs(0, seeded), "max_tokens": NUM_TOKENS, **({"lora": LORA} if seeded else {})}


@functools.lru_cache(maxsize=None)
def expected(model, seeded: bool, lora=None) -> tuple[int, ...]:
    """The engine's tokens (with the adapter for the seeded requests, which run it)."""
    from splitserve.engine import Engine, EngineConfig, SamplingParams

    engine = Engine(model, EngineConfig(lora_modules=((LORA, str(lora)),) if lora else ()))
    return tuple(engine.generate([PROMPT], [SamplingParams(**kwargs(seeded))])[0].token_ids)


def alive(cluster, role: str) -> list:
    return [n for r, n in cluster.nodes if r == role and n.alive()]


def router_metrics(cluster) -> list:
    return scrape(cluster.router.extra["http"] + "/metrics")


def complete(cluster, seeded: bool):
    with Client(cluster.url, timeout_s=60) as client:
        return client.complete(prompt_token_ids=PROMPT, **kwargs(seeded))


def test_metrics_of_router_and_nodes_move_as_requests_run(cluster, tiny_model, lora):
    before = router_metrics(cluster)
    results = [complete(cluster, seeded) for seeded in (False, True)]
    assert [tuple(r.token_ids) for r in results] == [expected(tiny_model, False), expected(tiny_model, True, lora)]
    after = router_metrics(cluster)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)
    assert delta("splitserve_router_requests_total", outcome="length") == 2
    assert delta("splitserve_router_generation_tokens_total") == 2 * NUM_TOKENS
    assert delta("splitserve_router_prompt_tokens_total") == 2 * len(PROMPT)
    for name in ("time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds"):
        assert delta(f"splitserve_router_{name}_count") == 2
    assert delta("splitserve_router_inter_token_latency_seconds_count") >= 2
    assert value(after, "splitserve_router_node_healthy") == 6
    used = {r.final.prefill_node for r in results} | {r.final.decode_node for r in results}
    nodes = {n.address: (role, scrape(f"http://{n.extra['metrics']}/metrics")) for role, n in cluster.nodes
             if n.address in used}
    for role, samples in nodes.values():
        assert value(samples, "splitserve_kv_blocks_total") > 0
        blocks = str(int(value(samples, "splitserve_kv_blocks_total")))
        assert value(samples, "splitserve_cache_config_info", block_size="16", cache_dtype="float32", num_blocks=blocks,
                     enable_prefix_caching="true") == 1
        assert value(samples, "splitserve_rpcs_total", method="Prefill" if role == "prefill" else "Decode") >= 1
        assert value(samples, "splitserve_kv_transfer_bytes_total", direction="send" if role == "prefill" else "receive") > 0
        assert value(samples, "splitserve_time_to_first_token_seconds_count") >= 1
        assert value(samples, "splitserve_lora_adapters_loaded") == 1  # idle: the adapter's series reads 0
        assert value(samples, "splitserve_lora_requests_running", adapter=LORA) == 0
        if role == "decode":  # the receiver's own count, exported per scrape
            failures = [v for n, _, v in samples if n == "splitserve_kv_transfer_checksum_failures_total"]
            assert failures == [0.0]
    sent, received = (sum(value(s, "splitserve_kv_transfer_bytes_total", direction=d) for _, s in nodes.values())
                      for d in ("send", "receive"))
    assert sent == received == 2 * 2 * 2 * len(PROMPT) * 2 * 16 * 4  # requests x layers x K,V x tokens x heads x dim x fp32


class _NoPrefixStore:
    """The prefix store's metrics are declared by nodes that have one (--prefix-store-url; these do not)."""

    def stats(self) -> dict:
        return collections.defaultdict(int)


def test_the_grafana_dashboard_queries_only_metrics_the_services_export(cluster):
    """Every metric a panel of the chart's dashboard (scripts/render_dashboard.py) reads is declared by the router or
    by a prefill or decode node."""
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "helm/splitserve/dashboards/splitserve.json").read_text())
    queried = {name for p in dashboard["panels"] for t in p.get("targets", [])
               for name in re.findall(r"splitserve_[a-z0-9_]+", t["expr"])}
    exported = exported_names(cluster.router.extra["http"] + "/metrics")
    for role in ("prefill", "decode"):
        exported |= exported_names(f"http://{alive(cluster, role)[0].extra['metrics']}/metrics")
    exported |= {family.name + "_total" for family in PrefixStoreCollector(_NoPrefixStore()).collect()}
    assert len(queried) >= 15 and queried <= exported, sorted(queried - exported)


def running_decode(cluster):
    return next((n for n in alive(cluster, "decode") if node_stats(n.address).num_running > 0), None)


def stream_killing_decode_after(cluster, seeded: bool, after: int):
    """Streams one request; once `after` tokens arrived, kill -9s the decode node serving it."""
    tokens, final, victim = [], None, None
    with Client(cluster.url, timeout_s=60) as client:
        for event in client.generate(prompt_token_ids=PROMPT, **kwargs(seeded)):
            if not hasattr(event, "token_ids"):
                final = event
                continue
            tokens += event.token_ids
            if victim is None and len(tokens) >= after:
                victim = running_decode(cluster)
                assert victim is not None, "no decode node is running the request"
                kill(victim)
    return tokens, final, victim


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_killing_the_decode_node_after_5_tokens_changes_nothing_the_client_sees(cluster, tiny_model, lora, seeded):
    failovers = value(router_metrics(cluster), "splitserve_router_failovers_total", code="UNAVAILABLE")
    tokens, final, victim = stream_killing_decode_after(cluster, seeded, after=5)
    assert tuple(tokens) == expected(tiny_model, seeded, lora)
    assert final.finish_reason == "length" and final.completion_tokens == NUM_TOKENS
    assert final.decode_node != victim.address
    assert value(router_metrics(cluster), "splitserve_router_failovers_total", code="UNAVAILABLE") == failovers + 1


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_killing_the_prefill_node_before_it_answers_retries_on_another(cluster, tiny_model, lora, seeded):
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=complete(cluster, seeded)))
    thread.start()
    assert wait_until(lambda: any(node_stats(d.address).num_reserved for d in alive(cluster, "decode")), 10, 0.02)
    time.sleep(0.2)  # the first layer is on its way
    samples = router_metrics(cluster)  # ties rotate among idle nodes: ask the router which one it chose
    victim = next((p for p in alive(cluster, "prefill")
                   if value(samples, "splitserve_router_node_inflight_prefill_tokens", node=p.address) > 0), None)
    assert victim is not None, "the router has no prefill in flight"
    kill(victim)
    thread.join(60)
    assert tuple(result["r"].token_ids) == expected(tiny_model, seeded, lora)
    assert result["r"].final.prefill_node != victim.address
    for node in alive(cluster, "decode") + alive(cluster, "prefill"):
        assert used_blocks_settle_to_zero(node.address)


def test_when_the_last_decode_node_dies_the_client_gets_a_clear_error(cluster):
    assert len(alive(cluster, "decode")) == 1
    with pytest.raises(grpc.RpcError) as err:
        stream_killing_decode_after(cluster, seeded=False, after=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "failed after" in err.value.details() and "Decode on" in err.value.details()
    assert value(router_metrics(cluster), "splitserve_router_request_errors_total", code="UNAVAILABLE") >= 1
