"""node.engine.speculativeConfig reaches the nodes' command lines as vLLM's JSON (Helm's own rendering, the node's
own parser), a pool may set it alone, and the schema refuses what the node would."""

from __future__ import annotations

import json

import pytest
import yaml

from node.config import _engine
from splitserve.engine.speculation import NgramSpeculation
from tests.helm.test_chunk_cache_values import node_args
from tests.helm.test_profile_job import render

NGRAM = "{method: ngram, num_speculative_tokens: 3, prompt_lookup_max: 5, disable_by_batch_size: 2}"


def test_every_node_runs_the_configured_speculation(monkeypatch):
    for args in node_args(f"{{node: {{engine: {{speculativeConfig: {NGRAM}}}}}}}", monkeypatch):
        assert _engine(args).speculative == NgramSpeculation(3, max_ngram=5, min_ngram=3, max_batch=2)


def test_off_by_default_and_a_pool_may_turn_it_on(monkeypatch):
    assert all(_engine(args).speculative is None for args in node_args("{}", monkeypatch))
    values = f"{{decode: {{engine: {{speculativeConfig: {NGRAM}}}}}}}"
    by_role = {args.role: _engine(args).speculative for args in node_args(values, monkeypatch)}
    assert by_role["decode"] is not None and by_role["prefill"] is None


@pytest.mark.parametrize("bad", ["{method: eagle, num_speculative_tokens: 3}", "{method: ngram}",
                                 "{method: ngram, num_speculative_tokens: 0}", "{num_speculative_tokens: 3}",
                                 "{method: ngram, num_speculative_tokens: 3, model: x}"])
def test_what_the_node_refuses_the_schema_refuses(bad):
    with pytest.raises(Exception, match="speculativeConfig"):
        render(f"{{node: {{engine: {{speculativeConfig: {bad}}}}}}}")
    with pytest.raises(ValueError):
        NgramSpeculation.from_json(json.dumps(yaml.safe_load(bad)))
