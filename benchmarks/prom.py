"""Reading one number off a running service's Prometheus /metrics, for benchmarks that count what moved."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples at url (http://host:port/metrics) whose labels include `labels`."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def kv_received_bytes(metrics_addresses: list[str]) -> float:
    """KV bytes the nodes at these metrics addresses (host:port) received, all together."""
    return sum(metric_sum(f"http://{a}/metrics", "splitserve_kv_transfer_bytes_total", direction="receive")
               for a in metrics_addresses)
