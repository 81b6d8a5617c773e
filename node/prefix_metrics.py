"""The prefix store's Prometheus metrics (splitserve/prefixstore), read from PrefixStore.stats() at scrape time.

    splitserve_prefix_store_requested_tokens_total   prompt tokens (in full blocks) this node lacked and looked up
    splitserve_prefix_store_hit_tokens_total         of those, read from Redis into the KV cache (not computed)
    splitserve_prefix_store_stored_tokens_total      prompt (and answer) tokens written to Redis
    splitserve_prefix_store_bytes_total{direction="read"|"written"}
    splitserve_prefix_store_redis_errors_total       Redis calls that failed (the prompt was computed)
    splitserve_prefix_store_corrupt_values_total     values dropped: bad header, checksum, shape or positions
    splitserve_prefix_store_skipped_stores_total     prefills (answers) not stored: too many stores under way
    splitserve_prefix_store_stores_total, splitserve_prefix_store_store_seconds_total   prefills (answers)
                                                     stored, and the time from each one's end to its blocks in Redis
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily

from splitserve.prefixstore.node_path import PrefixStore

P = "splitserve_prefix_store"
DOCS = {"requested_tokens": "prompt tokens in full blocks this node lacked, looked up in Redis",
        "hit_tokens": "prompt tokens read from Redis into the KV cache instead of computed",
        "stored_tokens": "prompt (and answer) tokens written to Redis",
        "redis_errors": "Redis calls that failed (the prompt was computed)",
        "corrupt_values": "values dropped for a bad header, checksum, shape or positions",
        "skipped_stores": "prefills (or answers) not stored because too many stores were under way",
        "stores": "prefills (or answers) whose blocks were stored",
        "store_seconds": "time from each stored prefill (or answer) to its blocks in Redis (another node may read "
                         "them then)"}


class PrefixStoreCollector:
    def __init__(self, store: PrefixStore):
        self.store = store

    def collect(self):
        s = self.store.stats()
        moved = CounterMetricFamily(f"{P}_bytes", "prefix-store bytes read from / written to Redis",
                                    labels=["direction"])
        moved.add_metric(["read"], s["bytes_read"])
        moved.add_metric(["written"], s["bytes_written"])
        yield moved
        for name, doc in DOCS.items():
            yield CounterMetricFamily(f"{P}_{name}", doc, value=s[name])
