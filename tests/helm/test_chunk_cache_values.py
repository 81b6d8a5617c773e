"""node.chunkCache values reach every node's command line, rendered by Helm's own engine and parsed
by the package's parser into the chunk-cache configuration the node runs with."""

from __future__ import annotations

import pytest

from node.config import _chunk_cache
from tests.helm.chart import config_env, splitserve_containers
from tests.helm.test_profile_job import parse, render

CUSTOM = """{node: {chunkCache: {localBytes: 1048576, ttlSeconds: 60, int8: true, planning: ratio,
  blendRatio: "0.3,0.1", blendCheckLayers: "1,2", cachecraftAlpha: 0.5, variants: 3, liveVariants: 0,
  eviction: lru, load: whole}}, mixed: {enabled: true}}"""


def node_args(values_yaml: str, monkeypatch) -> list:
    docs = render(values_yaml)
    containers = [c for _, c in splitserve_containers(docs) if c["args"][0] == "node"]
    assert len(containers) >= 2
    return [parse(c["args"], config_env(docs, c), monkeypatch) for c in containers]


def test_defaults_render_the_node_defaults(monkeypatch):
    defaults = parse(["node", "--model=m"], {}, monkeypatch)
    for args in node_args("{mixed: {enabled: true}}", monkeypatch):
        for name in ("chunk_cache_bytes", "chunk_ttl_s", "chunk_int8", "chunk_planning", "blend_ratio",
                     "blend_check_layers", "cachecraft_alpha", "chunk_variants", "chunk_live_variants",
                     "chunk_eviction", "chunk_load"):
            assert getattr(args, name) == getattr(defaults, name), name


def test_custom_values_reach_the_chunk_cache_config(monkeypatch):
    for args in node_args(CUSTOM, monkeypatch):
        assert (args.chunk_cache_bytes, args.chunk_ttl_s, args.chunk_int8) == (1 << 20, 60, True)
        config = _chunk_cache(args)
        assert config.planning == "ratio" and config.blend.check_layers == (1, 2)
        assert config.blend.ratios == (0.3, 0.1) and config.craft.alpha == 0.5
        assert config.craft.max_variants == 3 and config.live_variants == 0
        assert (config.eviction, config.layerwise_load) == ("lru", False)


@pytest.mark.parametrize("bad", ["{node: {chunkCache: {eviction: fifo}}}", "{node: {chunkCache: {blendRatio: 'a'}}}",
                                 "{node: {chunkCache: {liveVariants: -1}}}", "{node: {chunkCache: {load: lazy}}}"])
def test_bad_values_are_refused_by_the_schema(bad):
    with pytest.raises(Exception, match="chunkCache"):
        render(bad)
