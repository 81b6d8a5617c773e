"""model.loraModules reach every node's command line (Helm's own rendering, the package's parser) and no bad name
or path passes the schema."""

from __future__ import annotations

import pytest

from node.config import _engine
from tests.helm.chart import config_env, splitserve_containers
from tests.helm.test_chunk_cache_values import node_args
from tests.helm.test_profile_job import parse, render

LORA = "{model: {loraModules: [{name: sql, path: /models/adapters/sql}, {name: chat-v2, path: /models/a/c}]}}"


def test_adapters_reach_every_node_and_no_router(monkeypatch):
    for args in node_args(LORA, monkeypatch):
        assert _engine(args).lora_modules == (("sql", "/models/adapters/sql"), ("chat-v2", "/models/a/c"))
    docs = render(LORA)
    router = [c for _, c in splitserve_containers(docs) if c["args"][0] == "router"]
    assert router and all("--lora-modules" not in c["args"] for c in router)


def test_runtime_lora_updating_is_a_router_flag(monkeypatch):
    docs = render("{router: {allowRuntimeLora: true}}")
    [router] = [c for _, c in splitserve_containers(docs) if c["args"][0] == "router"]
    assert parse(router["args"], config_env(docs, router), monkeypatch).allow_runtime_lora
    [router] = [c for _, c in splitserve_containers(render("{}")) if c["args"][0] == "router"]
    assert "--allow-runtime-lora" not in router["args"]


def test_runtime_adapters_recorded_in_the_charts_redis_reach_the_router(monkeypatch):
    """router.loraStore: redis gives every replica the chart's Redis URL (password from the secret), so they share
    the runtime adapters; memory, or runtime updating off, gives none."""
    docs = render("{router: {allowRuntimeLora: true, loraStore: redis, replicas: 3}}")
    [router] = [c for _, c in splitserve_containers(docs) if c["args"][0] == "router"]
    config = parse(router["args"], config_env(docs, router), monkeypatch)
    assert config.lora_store.startswith("redis://") and "REDIS_PASSWORD" in config_env(docs, router)
    for values in ("{router: {allowRuntimeLora: true}}", "{router: {loraStore: redis}}"):
        [router] = [c for _, c in splitserve_containers(render(values)) if c["args"][0] == "router"]
        assert parse(router["args"], config_env(render(values), router), monkeypatch).lora_store == "memory"


def test_no_adapters_by_default(monkeypatch):
    for args in node_args("{}", monkeypatch):
        assert _engine(args).lora_modules == ()
    docs = render("{}")
    assert all("SPLITSERVE_LORA_MODULES" not in config_env(docs, c) for _, c in splitserve_containers(docs))


@pytest.mark.parametrize("bad", ["{model: {loraModules: [{name: 'a b', path: /x}]}}",
                                 "{model: {loraModules: [{name: a, path: relative}]}}",
                                 "{model: {loraModules: [{name: a}]}}"])
def test_bad_adapters_are_refused_by_the_schema(bad):
    with pytest.raises(Exception, match="loraModules"):
        render(bad)
