"""The chaos suite's cluster, mode and report.

Short mode (the default, what CI runs): each fault once under a short load, the soak for 75
s. Long mode (`SPLITSERVE_CHAOS_LONG=1`, run locally; `python benchmarks/reliability.py`):
each fault several times under a longer load, a 30-minute soak, and the report goes to
benchmarks/results/reliability.json (short mode writes it under pytest's temporary folder, or
to $SPLITSERVE_RELIABILITY_JSON).
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from splitserve.bench.prompts import load_tokenizer
from tests.support.cluster import ParallelCluster
from tests.unit.bench_support import bench_model_dir  # noqa: F401
from tests.chaos.load import References

LONG = os.environ.get("SPLITSERVE_CHAOS_LONG", "") not in ("", "0")
SEED = int(os.environ.get("SPLITSERVE_CHAOS_SEED", "20261129"))
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "reliability.json"
# Every prompt sends its KV layer by layer, the layers 30 ms apart: a prefill and its transfer last
# long enough for a fault to hit them.
NODE_ARGS = ["--num-blocks=512", "--transfer-timeout-s=5", "--fault-signals", "--fault-kv-send-delay-s=0.03",
             "--one-shot-max-tokens=0",
             "--blend-ratio=1.0", "--chunk-planning=ratio"]
POLICY = "round_robin"  # every node has requests in flight when a fault hits it (least_loaded favours one when idle)
ROUTER_ARGS = ["--max-retries=5", "--max-queue=512", "--http-port=-1"]


@pytest.fixture(scope="package")
def chaos_cluster(bench_model_dir):  # noqa: F811
    """Router, 2 prefill, 2 decode (torch KV transport), a private Redis. Blending recomputes
    every token (ratio 1.0), so a RAG request's output is the plain engine's whether its
    chunks hit the cache or not: exact comparison holds across a Redis restart."""
    cluster = ParallelCluster(bench_model_dir, prefill=2, decode=2, private_redis=True, policy=POLICY,
                              node_args=NODE_ARGS, router_args=ROUTER_ARGS)
    cluster.start()
    if cluster.redis is None:
        cluster.stop()
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="package")
def chaos_tokenizer(bench_model_dir):  # noqa: F811
    return load_tokenizer(bench_model_dir)


@pytest.fixture(scope="package")
def references(bench_model_dir):  # noqa: F811
    return References(bench_model_dir)


@pytest.fixture(scope="package")
def reliability_report(tmp_path_factory):
    """A dict the tests fill; written as JSON once the chaos tests are done."""
    report = {"mode": "long" if LONG else "short", "seed": SEED,
              "generated_by": "SPLITSERVE_CHAOS_LONG=1 pytest -m chaos tests/chaos" if LONG else "pytest tests/chaos",
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "cluster": {
                  "model": "tiny (2 layers, hidden 64)", "prefill": 2, "decode": 2, "transport": "torch (gloo)", "policy": POLICY,
                  "redis": "private redis-server", "node_args": NODE_ARGS, "router_args": ROUTER_ARGS},
              "faults": {}}
    started = time.monotonic()
    yield report
    report["wall_s"] = round(time.monotonic() - started, 1)
    path = Path(os.environ.get("SPLITSERVE_RELIABILITY_JSON") or
                (RESULTS if LONG else tmp_path_factory.getbasetemp() / "reliability.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreliability report: {path}")
