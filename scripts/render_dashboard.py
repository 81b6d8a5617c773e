"""Write the chart's Grafana dashboard (helm/splitserve/dashboards/splitserve.json) from the panels below.

    python scripts/render_dashboard.py          # rewrite the JSON
    python scripts/render_dashboard.py --check  # exit 1 if the committed JSON differs

The dashboard reads the router's and the nodes' Prometheus metrics (README "Metrics"): requests and
latencies as clients see them (the router), KV pools, queues, engine steps and KV transfers (the nodes).
Every query's metric is checked against what running services export (tests/integration/test_router_failover.py).
Grafana's dashboard sidecar loads it from the ConfigMap the chart makes with `grafana.dashboard.enabled`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "helm" / "splitserve" / "dashboards" / "splitserve.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
WIDTH, HEIGHT = 12, 8


def quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    """p50 and p99 of a histogram over all its series (or per `by` label)."""
    group = f"le{', ' + by if by else ''}"
    legend = f" {{{{{by}}}}}" if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{RATE})))", f"p{int(q * 100)}{legend}")
            for q in (0.5, 0.99)]


def rate(metric: str, by: str = "", legend: str = "") -> tuple[str, str]:
    return (f"sum{f' by ({by})' if by else ''} (rate({metric}{RATE}))", legend or (f"{{{{{by}}}}}" if by else metric))


# (title, unit, [(PromQL, legend)])
ROUTER_PANELS = [
    ("Requests by outcome", "reqps", [rate("splitserve_router_requests_total", "outcome")]),
    ("Time to first token", "s", quantiles("splitserve_router_time_to_first_token_seconds")),
    ("Time per output token", "s", quantiles("splitserve_router_time_per_output_token_seconds")),
    ("End-to-end latency", "s", quantiles("splitserve_router_e2e_request_latency_seconds")),
    ("Tokens per second", "short", [rate("splitserve_router_prompt_tokens_total", legend="prompt"),
                                    rate("splitserve_router_generation_tokens_total", legend="generated")]),
    ("Requests running and admitted", "short", [("sum (splitserve_router_requests_running)", "running"),
                                                ("sum (splitserve_router_queue_depth)", "admitted")]),
    ("Errors and failovers", "reqps", [rate("splitserve_router_request_errors_total", "code"),
                                       rate("splitserve_router_failovers_total", legend="failovers")]),
    ("Healthy nodes", "short", [("sum by (role) (splitserve_router_node_healthy)", "{{role}}")]),
    ("HTTP requests by route", "reqps", [rate("splitserve_router_http_requests_total", "route")]),
    ("Batch API lines", "short", [rate("splitserve_router_batch_lines_total", "outcome"),
                                  ("sum (splitserve_router_batches_running)", "batches running")]),
    ("Requests by LoRA adapter", "reqps", [rate("splitserve_router_lora_requests_total", "adapter")]),
    ("Routes by what decode nodes hold", "reqps", [
        rate("splitserve_router_decode_affinity_routes_total", legend="split, to the node holding the prompt"),
        rate("splitserve_router_local_prefills_total", legend="run whole on a decode node")]),
]
NODE_PANELS = [
    ("KV blocks used", "percentunit", [("splitserve_kv_blocks_used_ratio", "{{instance}}")]),
    ("Engine queue and batch", "short", [("splitserve_requests_waiting", "waiting {{instance}}"),
                                         ("splitserve_requests_running", "running {{instance}}")]),
    ("Engine step", "s", quantiles("splitserve_engine_step_seconds", "instance")),
    ("Pending prefill tokens", "short", [("splitserve_pending_prefill_tokens", "{{instance}}")]),
    ("KV transfer throughput", "Bps", [rate("splitserve_kv_transfer_bytes_total", "direction")]),
    ("KV transfer time", "s", quantiles("splitserve_kv_transfer_seconds", "direction")),
    ("KV checksum failures", "short", [("sum (increase(splitserve_kv_transfer_checksum_failures_total"
                                        f"{RATE}))", "failures")]),
    ("Node time to first token", "s", quantiles("splitserve_time_to_first_token_seconds", "instance")),
    ("LoRA adapters' requests on the nodes", "short", [
        ("sum by (adapter) (splitserve_lora_requests_waiting)", "waiting {{adapter}}"),
        ("sum by (adapter) (splitserve_lora_requests_running)", "running {{adapter}}")]),
    ("RAG chunk cache: chunks found and missed", "short", [
        rate("splitserve_chunk_cache_hits_total", "tier", "found ({{tier}} tier)"),
        rate("splitserve_chunk_cache_misses_total", legend="missed (computed)")]),
    ("Prefix store: prompt tokens (--prefix-store-url)", "short", [
        rate("splitserve_prefix_store_requested_tokens_total", legend="lacked, looked up in Redis"),
        rate("splitserve_prefix_store_hit_tokens_total", legend="read from Redis"),
        rate("splitserve_prefix_store_stored_tokens_total", legend="stored (prompts and answers)")]),
    ("Speculative drafts kept (--speculative-config)", "percentunit", [
        (f"sum by (instance) (rate(splitserve_spec_decode_accepted_tokens_total{RATE})) / sum by (instance) "
         f"(rate(splitserve_spec_decode_draft_tokens_total{RATE}))", "{{instance}}")]),
]


def panel(panel_id: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int) -> dict:
    return {"id": panel_id, "type": "timeseries", "title": title, "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": WIDTH, "h": HEIGHT},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
                        for i, (expr, legend) in enumerate(targets)]}


def row(panel_id: int, title: str, y: int) -> dict:
    return {"id": panel_id, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def panels() -> list[dict]:
    out, y = [], 0
    for title, group in (("Router: what clients see", ROUTER_PANELS), ("Nodes: engines and KV transfers", NODE_PANELS)):
        out.append(row(len(out) + 1, title, y))
        y += 1
        for i, (name, unit, targets) in enumerate(group):
            out.append(panel(len(out) + 1, name, unit, targets, (i % 2) * WIDTH, y + (i // 2) * HEIGHT))
        y += -(-len(group) // 2) * HEIGHT
    return out


def dashboard() -> dict:
    return {
        "title": "splitserve", "uid": "splitserve", "tags": ["splitserve", "llm"], "editable": True,
        "schemaVersion": 39, "version": 1, "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
            {"name": "filters", "label": "Filters", "type": "adhoc", "datasource": DATASOURCE},  # e.g. namespace
        ]},
        "panels": panels(),
    }


def rendered() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed dashboard is stale")
    if parser.parse_args().check:
        if not OUT.exists() or OUT.read_text() != rendered():
            print(f"{OUT} is stale: run python scripts/render_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(rendered())
    print(f"wrote {OUT.relative_to(OUT.parents[3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
