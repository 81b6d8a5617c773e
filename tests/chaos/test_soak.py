"""Soak: the Azure conv trace replayed for 75 s (30 minutes in long mode) at a rate this machine
serves; every process's resident memory and every node's used KV blocks are sampled.

After the warm-up (the first quarter), resident memory may not grow by more than 5% in any
process (median of the window right after warm-up vs the last window), every request must
complete, and when the load stops every KV pool drains to zero used blocks.
"""

from __future__ import annotations

import random

import pytest

from splitserve.client import Client
from splitserve.engine.cpu_linear import bucket_rows
from tests.chaos.conftest import LONG
from tests.chaos.load import Load, LoadConfig, trace_replay
from tests.chaos.memory import Sampler, growth
from tests.support.cluster import used_blocks_settle_to_zero

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
DURATION_S, SAMPLE_S = (1800.0, 10.0) if LONG else (75.0, 1.5)
RATE = 3.0  # requests/s on average, with the trace's bursts
MAX_GROWTH_PCT = 5.0


def warm_up_row_counts(cluster, max_rows: int = 2046) -> None:
    """One prompt per padded row count (cpu_linear.bucket_rows), twice: round robin gives each
    prefill node one of each. oneDNN keeps memory per row count, once: that is warm-up, not growth."""
    rng = random.Random(0)
    lengths = sorted({min(bucket_rows(n), max_rows) for n in range(1, max_rows + 1)})  # 2046 + 2 tokens: the context
    with Client(cluster.url, timeout_s=60) as client:
        for n in lengths:
            prompt = [rng.randrange(5, 1000) for _ in range(n)]
            for _ in range(2):
                client.complete(prompt_token_ids=prompt, max_tokens=2, ignore_eos=True)


def test_soak_memory_and_kv_blocks_stay_flat(chaos_cluster, chaos_tokenizer, reliability_report):
    warm_up_row_counts(chaos_cluster)
    processes = {s.name: s.proc.pid for s in chaos_cluster.services()}
    processes["redis"] = chaos_cluster.redis.proc.pid
    sampler = Sampler(processes, {n.name: n.address for _, n in chaos_cluster.nodes}, SAMPLE_S).start()
    load = Load(chaos_cluster.url, chaos_tokenizer, LoadConfig(duration_s=DURATION_S), trace_replay(RATE)).start()
    sent = load.join()
    sampler.stop()
    warmup, window = DURATION_S / 4, DURATION_S / 6
    rss = {name: growth(series, warmup, DURATION_S, window) for name, series in sampler.rss.items()}
    blocks = {name: growth(series, warmup, DURATION_S, window) for name, series in sampler.blocks.items()}
    drained = {name: used_blocks_settle_to_zero(node.address, timeout_s=30) for name, node in
               ((n.name, n) for _, n in chaos_cluster.nodes)}
    completed = sum(record.success for _, record in sent)
    reliability_report["soak"] = {
        "duration_s": DURATION_S, "workload": "azure-conv trace, lengths clipped to 256 in / 32 out",
        "rate_rps": RATE, "requests_sent": len(sent), "completed": completed, "sample_interval_s": SAMPLE_S,
        "warmup_s": warmup, "window_s": window, "rss_bytes": rss,
        "max_rss_growth_pct": max(r["growth_pct"] for r in rss.values()),
        "used_kv_blocks_median": blocks, "kv_pools_drained": drained}
    assert len(sent) > 0.8 * RATE * DURATION_S * 0.5  # the trace kept the cluster busy
    assert completed == len(sent), [r.error for _, r in sent if not r.success][:5]
    assert all(drained.values()), drained
    assert all(r["growth_pct"] < MAX_GROWTH_PCT for r in rss.values()), rss
