"""Faults injected while a steady load runs: a node failure costs a client latency, not its answer.

For each kind of fault (tests/chaos/faults.py), `splitserve bench` drives the cluster while
the seeded injector breaks something and puts it right. Then every request must have either
completed with exactly the single-process engine's output, or ended with a documented error
code (DOCUMENTED_CODES) - none hangs past its deadline, none is lost (a wrong or cut output,
an undocumented error) - every node is up again and every KV pool is back to zero used blocks.
"""

from __future__ import annotations

import random
import time

import pytest

from splitserve.client import Client
from tests.chaos.conftest import LONG, SEED
from tests.chaos.faults import FAULTS, MIN_FAILOVERS, FaultLog, inject
from tests.chaos.load import Load, LoadConfig, classify
from tests.support.cluster import used_blocks_settle_to_zero
from tests.support.metrics import scrape, value

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
ROUNDS, DURATION_S = (3, 75.0) if LONG else (1, 14.0)
FIRST_AT_S, FAULT_SPACING_S = 2.0, 22.0


def failovers(cluster) -> float:
    return value(scrape(cluster.http_url + "/metrics"), "splitserve_router_failovers_total")


def run_with_faults(cluster, tokenizer, kind: str):
    rng = random.Random(f"{SEED}-{kind}")
    load = Load(cluster.url, tokenizer, LoadConfig(duration_s=DURATION_S, seed=rng.randrange(1 << 16)))
    log = FaultLog()
    before = failovers(cluster)
    load.start()
    for i in range(ROUNDS):
        inject(kind, cluster, rng, log, FIRST_AT_S + i * FAULT_SPACING_S + rng.uniform(0, 2))
    sent = load.join()
    log(f"load done: {len(sent)} requests")
    return load, sent, log, failovers(cluster) - before


@pytest.mark.parametrize("kind", list(FAULTS))
def test_every_request_completes_exactly_or_fails_cleanly(kind, chaos_cluster, chaos_tokenizer, references,
                                                          reliability_report):
    load, sent, log, num_failovers = run_with_faults(chaos_cluster, chaos_tokenizer, kind)
    tally = classify([record for _, record in sent], references.outputs(load.requests(sent)), load.config.deadline_s)
    reliability_report["faults"][kind] = {"injected": ROUNDS, **tally.to_dict(), "router_failovers": num_failovers,
                                          "load_s": DURATION_S, "events": log.events}
    assert tally.hung == 0, tally.to_dict()
    assert tally.lost == 0, tally.to_dict()
    assert tally.completed_exactly >= 0.5 * tally.requests_sent > 0, tally.to_dict()
    assert num_failovers >= MIN_FAILOVERS[kind] * ROUNDS, "the fault did not hit any request"
    assert_cluster_recovered(chaos_cluster)


def assert_cluster_recovered(cluster) -> None:
    assert all(service.alive() for service in cluster.services())
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address, timeout_s=30), f"{node.name} kept KV blocks"
    deadline = time.monotonic() + 30
    with Client(cluster.url, timeout_s=30) as client:
        while True:  # the restarted nodes are back in routing: every node serves again
            result = client.complete(prompt="after the fault", max_tokens=4, ignore_eos=True)
            if len(result.token_ids) == 4 or time.monotonic() > deadline:
                break
    assert len(result.token_ids) == 4
