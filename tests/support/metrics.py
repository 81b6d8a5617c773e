"""Scraping a Prometheus endpoint in tests, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def families(url: str) -> list:
    """The metric families the endpoint at url serves, parsed."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def scrape(url: str) -> list:
    """Every sample at url: [(name, labels, value)]."""
    return [(s.name, s.labels, s.value) for family in families(url) for s in family.samples]


def value(samples: list, name: str, **labels) -> float:
    """The sum of name's samples whose labels include `labels` (0.0 when there are none)."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items()))


SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                   "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "unknown": ("",)}


def exported_names(url: str) -> set[str]:
    """Every sample name the endpoint at url declares, whether or not a labelled metric has samples yet."""
    return {family.name + suffix for family in families(url) for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}
