"""Router values reach the router's command line as its own parser and config read them (Helm's rendering)."""

from __future__ import annotations

import pytest

from router.config import RouterConfig
from tests.helm.chart import config_env, splitserve_containers
from tests.helm.test_profile_job import parse, render


def router_config(values_yaml: str, monkeypatch) -> RouterConfig:
    docs = render(values_yaml)
    [router] = [c for _, c in splitserve_containers(docs) if c["args"][0] == "router"]
    return RouterConfig.from_args(parse(router["args"], config_env(docs, router), monkeypatch))


def test_conditional_disaggregation_is_off_unless_set(monkeypatch):
    assert router_config("{}", monkeypatch).max_local_prefill_tokens == 0
    assert router_config("{router: {maxLocalPrefillTokens: 64}}", monkeypatch).max_local_prefill_tokens == 64


def test_a_negative_threshold_is_refused_by_the_schema():
    with pytest.raises(Exception, match="maxLocalPrefillTokens|minimum"):
        render("{router: {maxLocalPrefillTokens: -1}}")


def test_decode_affinity_is_on_unless_turned_off(monkeypatch):
    assert router_config("{}", monkeypatch).decode_affinity
    assert not router_config("{router: {decodeAffinity: false}}", monkeypatch).decode_affinity


def test_the_decode_affinity_slack_reaches_the_router_and_a_negative_one_is_refused(monkeypatch):
    assert router_config("{}", monkeypatch).decode_affinity_slack == 2
    assert router_config("{router: {decodeAffinitySlack: 0}}", monkeypatch).decode_affinity_slack == 0
    with pytest.raises(Exception, match="decodeAffinitySlack|minimum"):
        render("{router: {decodeAffinitySlack: -1}}")
