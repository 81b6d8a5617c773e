"""node.prefixStore reaches every node's command line (decode nodes store their answers' blocks), rendered by Helm's
own engine and parsed by the node's parser into its configuration; without the chart's Redis it is refused."""

from __future__ import annotations

import pytest
import yaml

from node.config import NodeConfig
from tests.helm.chart import config_env, goldens, splitserve_containers
from tests.helm.test_profile_job import parse, render

ON = "{node: {prefixStore: {enabled: true, ttlSeconds: 600}}, mixed: {enabled: true}}"


def node_configs(values_yaml: str, monkeypatch) -> dict[str, NodeConfig]:
    docs = render(values_yaml)
    nodes = [(c, parse(c["args"], config_env(docs, c), monkeypatch)) for _, c in splitserve_containers(docs)
             if c["args"][0] == "node"]
    return {args.role: NodeConfig.from_args(args) for _, args in nodes}


def test_off_by_default(monkeypatch):
    assert {c.prefix_store_url for c in node_configs("{mixed: {enabled: true}}", monkeypatch).values()} == {None}


def test_on_every_node_shares_the_charts_redis(monkeypatch):
    configs = node_configs(ON, monkeypatch)
    assert set(configs) == {"prefill", "decode", "mixed"}
    for role in configs:
        assert configs[role].prefix_store_url == configs[role].chunks.redis_url
        assert configs[role].prefix_store_url.startswith("redis://") and configs[role].prefix_store_ttl_s == 600


def test_the_notes_say_how_to_size_redis_for_it():
    notes = next(text for source, text in goldens.render(yaml.safe_load(ON)).items() if source.endswith("NOTES.txt"))
    assert "Prefix store: on, in that Redis (maxmemory 1gb, LRU)" in notes and "redis.internal.maxmemory" in notes


def test_answers_can_be_left_out(monkeypatch):
    assert {c.prefix_store_answers for c in node_configs(ON, monkeypatch).values()} == {True}
    off = "{node: {prefixStore: {enabled: true, answers: false}}, mixed: {enabled: true}}"
    assert {c.prefix_store_answers for c in node_configs(off, monkeypatch).values()} == {False}


@pytest.mark.parametrize("bad, message", [
    ("{node: {prefixStore: {enabled: true}}, redis: {mode: disabled}}", "needs the chart's Redis"),
    ("{node: {prefixStore: {ttlSeconds: 0}}}", "prefixStore"),
    ("{node: {prefixStore: {url: 'redis://x'}}}", "prefixStore")])
def test_bad_values_are_refused(bad, message):
    with pytest.raises(Exception, match=message):
        render(bad)
