"""model.kvCacheDtype reaches every node (the chart's config map, the node's own parser), one value for all of them
(a prefill and a decode node must agree on it), and the schema refuses what the node would."""

from __future__ import annotations

import pytest

from node.config import _engine
from tests.helm.test_chunk_cache_values import node_args
from tests.helm.test_profile_job import render


def test_every_node_keeps_its_kv_in_the_chosen_dtype(monkeypatch):
    assert {_engine(args).kv_dtype for args in node_args("{}", monkeypatch)} == {"float32"}
    configs = [_engine(args) for args in node_args("{model: {kvCacheDtype: float16}}", monkeypatch)]
    assert len(configs) >= 2 and {c.kv_cache_dtype for c in configs} == {"float16"}


@pytest.mark.parametrize("bad", ["fp8", "int8", "half"])
def test_the_schema_refuses_what_the_node_refuses(bad):
    with pytest.raises(Exception, match="kvCacheDtype"):
        render(f"{{model: {{kvCacheDtype: {bad}}}}}")
