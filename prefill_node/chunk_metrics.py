"""The chunk cache's Prometheus metrics, read from ChunkPath.stats() at scrape time.

    splitserve_chunk_cache_hits_total{tier="local"|"redis"}   chunks found, by tier
    splitserve_chunk_cache_misses_total                        chunks found in no tier
    splitserve_chunk_cache_redis_errors_total                  Redis calls that failed (each a miss)
    splitserve_chunk_cache_corrupt_values_total                values dropped: bad header or checksum
    splitserve_chunk_cache_redis_bytes_total{direction="read"|"written"}
    splitserve_chunk_cache_blended_requests_total, splitserve_chunk_cache_blend_seconds_total
    splitserve_chunk_cache_recompute_fraction                  rows computed / prompt rows, blended requests
    splitserve_chunk_cache_local_chunks, splitserve_chunk_cache_local_bytes   the local tier now
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from prefill_node.chunks import ChunkPath

P = "splitserve_chunk_cache"


class ChunkCacheCollector:
    def __init__(self, chunk_path: ChunkPath):
        self.chunk_path = chunk_path

    def collect(self):
        s = self.chunk_path.stats()
        hits = CounterMetricFamily(f"{P}_hits", "chunks found, by tier", labels=["tier"])
        hits.add_metric(["local"], s["local_hits"])
        hits.add_metric(["redis"], s["redis_hits"])
        yield hits
        moved = CounterMetricFamily(f"{P}_redis_bytes", "chunk-cache bytes read from / written to Redis",
                                    labels=["direction"])
        moved.add_metric(["read"], s["redis_bytes_read"])
        moved.add_metric(["written"], s["redis_bytes_written"])
        yield moved
        for name, key, doc in (("misses", "misses", "chunks found in no tier"),
                               ("redis_errors", "redis_errors", "Redis calls that failed (each counted as a miss)"),
                               ("corrupt_values", "corrupt_values", "values dropped for a bad header or checksum"),
                               ("blended_requests", "blended_requests", "prefills that reused chunk KV"),
                               ("blend_seconds", "blend_time_s", "time spent in blended prefills")):
            yield CounterMetricFamily(f"{P}_{name}", doc, value=s[key])
        for name, key, doc in (("recompute_fraction", "recompute_fraction", "rows computed / prompt rows (blended)"),
                               ("local_chunks", "num_local_chunks", "chunks in the local tier"),
                               ("local_bytes", "local_bytes", "bytes in the local tier")):
            yield GaugeMetricFamily(f"{P}_{name}", doc, value=s[key])
