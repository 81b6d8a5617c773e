"""Node metrics read from its parts: the KV receiver's checksum failures (decode nodes), the KV cache's settings."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest

import decode_node.setup as decode_setup
from node.config import NodeConfig
from node.metrics import NodeMetrics
from splitserve.cli import build_parser

NAME = b"splitserve_kv_transfer_checksum_failures_total"


def sample(metrics: NodeMetrics) -> float | None:
    for line in generate_latest(metrics.registry).splitlines():
        if line.startswith(NAME + b" "):
            return float(line.split()[1])
    return None


def test_the_counter_reads_the_receivers_count_at_each_scrape():
    metrics, receiver = NodeMetrics("decode"), SimpleNamespace(num_checksum_failures=0)
    assert sample(metrics) is None
    metrics.watch_kv_receiver(receiver)
    assert sample(metrics) == 0.0
    receiver.num_checksum_failures = 3
    assert sample(metrics) == 3.0
    assert b"# TYPE splitserve_kv_transfer_checksum_failures_total counter" in generate_latest(metrics.registry)


def test_the_decode_role_exports_its_receivers_counter(monkeypatch):
    receiver = SimpleNamespace(num_checksum_failures=2, close=lambda: None)
    monkeypatch.setattr(decode_setup, "make_receiver", lambda *a, **kw: receiver)
    args = build_parser().parse_args(["node", "--role", "decode", "--model", "m", "--transport", "grpc"])
    metrics = NodeMetrics("decode")
    role = decode_setup.build_decode(NodeConfig.from_args(args), "n1", SimpleNamespace(engine=None),
                                     SimpleNamespace(server=None, port=50051), metrics)
    assert role.worker.receiver is receiver and sample(metrics) == 2.0


def test_the_kv_cache_settings_are_the_labels_of_cache_config_info(tiny_model):
    """vLLM's cache_config_info: 1, labelled with the node's block size, KV dtype (--kv-cache-dtype resolved),
    blocks and prefix caching."""
    from splitserve.engine import Engine, EngineConfig

    engine = Engine(tiny_model, EngineConfig(kv_cache_dtype="float16", num_blocks=40, enable_prefix_caching=False))
    from concurrent.futures import Future

    def call(fn):  # the engine loop's call, run here
        done = Future()
        done.set_result(fn(engine))
        return done
    metrics = NodeMetrics("decode")
    metrics.watch_engine(SimpleNamespace(engine=engine, call=call))
    assert (b'splitserve_cache_config_info{block_size="16",cache_dtype="float16",enable_prefix_caching="false",'
            b'num_blocks="40"} 1.0') in generate_latest(metrics.registry)
