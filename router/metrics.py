"""The router's Prometheus metrics (served by the HTTP front at GET /metrics).

One `RouterMetrics` per process (`ROUTER`), in its own CollectorRegistry. The orchestrator
times every request it runs (whichever front sent it): TTFT, TPOT and ITL from the tokens it
yields, end to end at the last one; the fronts count what they refuse (`count_error`). Per-node
gauges are read from the NodeRegistry at scrape time. README "Metrics" lists every name.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

PREFIX = "splitserve_router"
# Seconds: 1 ms .. 60 s, dense where interactive latencies live.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5,
                   5.0, 10.0, 20.0, 40.0, 60.0)
NODE_GAUGES = {  # name suffix -> (help, NodeView attribute)
    "node_healthy": ("1 when the node passes its gRPC health checks and takes requests", "healthy"),
    "node_inflight_prefill_tokens": ("prompt tokens this router has in flight on the node", "inflight_prefill_tokens"),
    "node_inflight_decodes": ("requests this router has decoding or reserved on the node", "inflight_decodes"),
    "node_kv_blocks_free": ("free KV blocks the node last reported", "free_blocks"),
    "node_kv_blocks_total": ("KV blocks in the node's pool", "total_blocks"),
    "node_requests_waiting": ("requests queued in the node's engine (last Stats)", "num_waiting"),
    "node_requests_running": ("requests in the node's running batch (last Stats)", "num_running"),
    "node_kv_blocks_held": ("blocks the router counts in the node's prefix cache (what the node reports, and the "
                            "sequences finished there since; a guess for a node that does not report them)",
                            "held_blocks"),
}


class _NodeCollector:
    """Per-node gauges from the registry's snapshot, labelled {node, role}."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        views = self.registry.snapshot()
        for suffix, (doc, attr) in NODE_GAUGES.items():
            family = GaugeMetricFamily(f"{PREFIX}_{suffix}", doc, labels=["node", "role"])
            for v in views:
                family.add_metric([v.address, v.role], float(getattr(v, attr)))
            yield family


class RouterMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r, p = self.registry, PREFIX
        hist = lambda name, doc: Histogram(f"{p}_{name}", doc, buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = hist("time_to_first_token_seconds", "dispatch to the first token")
        self.tpot = hist("time_per_output_token_seconds", "per request: (last token - first token) / (tokens - 1)")
        self.itl = hist("inter_token_latency_seconds", "time between successive token chunks of a request")
        self.e2e = hist("e2e_request_latency_seconds", "dispatch to the request's end")
        self.requests = Counter(f"{p}_requests", "requests run, by how they ended: stop, length, closed "
                                "(ended by the router: stop string, client gone, deadline) or error",
                                ["outcome"], registry=r)
        self.errors = Counter(f"{p}_request_errors", "requests that ended in an error, by gRPC status code",
                              ["code"], registry=r)
        self.node_errors = Counter(f"{p}_node_call_errors", "failed node calls, by call and gRPC status code",
                                   ["call", "code"], registry=r)
        self.failovers = Counter(f"{p}_failovers", "requests re-dispatched to other nodes, by the failed call's code",
                                 ["code"], registry=r)
        self.accept_errors = Counter(f"{p}_accept_errors", "HTTP connections not accepted for lack of file "
                                     "descriptors (failed accept() calls; see the open-files limit)", registry=r)
        self.http_requests = Counter(f"{p}_http_requests", "HTTP requests answered, by route (its template: "
                                     "/v1/chat/completions, /v1/responses/{response_id}, ...; 'other' for no route), "
                                     "method and status", ["route", "method", "status"], registry=r)
        self.local_prefills = Counter(f"{p}_local_prefills", "requests run whole on a decode node, which had few "
                                      "of their prompt tokens left to compute (--max-local-prefill-tokens)", registry=r)
        self.decode_affinity_routes = Counter(f"{p}_decode_affinity_routes", "split requests sent to the decode "
                                              "node holding more of their prompt than the policy's choice",
                                              registry=r)
        self.lora_requests = Counter(f"{p}_lora_requests", "requests run on a LoRA adapter, by the adapter's name",
                                     ["adapter"], registry=r)
        self.prompt_tokens = Counter(f"{p}_prompt_tokens", "prompt tokens of requests run", registry=r)
        self.generation_tokens = Counter(f"{p}_generation_tokens", "tokens sent to clients", registry=r)
        self.embeddings = Counter(f"{p}_embeddings", "inputs embedded (/v1/embeddings, score, rerank, gRPC Embed)",
                                  registry=r)
        self.embedding_tokens = Counter(f"{p}_embedding_tokens", "tokens of the inputs embedded", registry=r)
        self.embedding_latency = hist("embedding_latency_seconds", "per input: dispatch to its vector (retries in)")
        self.batch_lines = Counter(f"{p}_batch_lines", "Batch API lines answered, by outcome: completed (2xx), failed "
                                   "(any other answer) or not_sent (batch cancelled or expired first)", ["outcome"],
                                   registry=r)
        self.batches_running = Gauge(f"{p}_batches_running", "Batch API batches this router is running", registry=r)
        self.running = Gauge(f"{p}_requests_running", "requests the orchestrator is running", registry=r)
        self.queue_depth = Gauge(f"{p}_queue_depth", "requests admitted by the router and not yet finished "
                                 "(the load-shedding queue)", registry=r)
        self._watching = False

    def watch(self, node_registry) -> None:
        """Adds the per-node gauges of node_registry (once)."""
        if not self._watching:
            self.registry.register(_NodeCollector(node_registry))
            self._watching = True

    def set_queue_depth_source(self, fn) -> None:
        """queue_depth reads fn() at scrape time (the admission control's count)."""
        self.queue_depth.set_function(fn)

    def count_error(self, code) -> None:
        """A request refused or failed with this gRPC StatusCode (or its name)."""
        self.errors.labels(getattr(code, "name", str(code))).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestTimer:
    """Times one request from dispatch; the orchestrator feeds it the tokens it yields."""

    def __init__(self, metrics: RouterMetrics, now: float, num_prompt_tokens: int):
        self.metrics, self.start, self.first, self.last = metrics, now, 0.0, 0.0
        self.num_tokens = 0
        metrics.prompt_tokens.inc(num_prompt_tokens)

    def tokens(self, n: int, now: float) -> None:
        if n == 0:
            return
        if self.num_tokens == 0:
            self.first = now
            self.metrics.ttft.observe(now - self.start)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last, self.num_tokens = now, self.num_tokens + n
        self.metrics.generation_tokens.inc(n)

    def end(self, outcome: str, now: float) -> None:
        self.metrics.requests.labels(outcome).inc()
        self.metrics.e2e.observe(now - self.start)
        if self.num_tokens > 1:
            self.metrics.tpot.observe((self.last - self.first) / (self.num_tokens - 1))


ROUTER = RouterMetrics()


def render() -> tuple[bytes, str]:
    """The exposition of this process's router metrics and its content type (for GET /metrics)."""
    return ROUTER.render()
