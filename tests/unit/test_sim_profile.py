"""`splitserve profile` measures for the node's own flags and writes no machine paths."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from splitserve.commands import profile as profile_command
from splitserve.sim.node_flags import SHAPE_FLAGS, node_defaults
from splitserve.sim.profiler import ProfileConfig, engine_shape


def profile_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    profile_command.register(parser.add_subparsers())
    return parser.parse_args(["profile", "--model", "m", *argv])


def test_the_shape_flags_default_to_the_node_flags(monkeypatch):
    args, node = profile_args(), node_defaults()
    for flag in SHAPE_FLAGS:
        name = flag[2:].replace("-", "_")
        assert getattr(args, name) == getattr(node, name), flag
    monkeypatch.setenv("SPLITSERVE_BLOCK_SIZE", "32")  # as on the node
    assert profile_args().block_size == 32 == node_defaults().block_size
    assert profile_args("--num-blocks", "7").num_blocks == 7


def test_the_kv_capacity_is_the_engines(tiny_model):
    from splitserve.engine import Engine, EngineConfig

    config = ProfileConfig(str(tiny_model), kv_cache_bytes=1 << 20)
    engine = Engine(tiny_model, EngineConfig(kv_cache_bytes=1 << 20, block_size=config.block_size))
    mc = engine.model_config
    assert engine_shape(config, mc, mc.kv_bytes_per_token(engine.config.torch_dtype)).num_blocks == engine.pool.num_blocks
    assert engine_shape(ProfileConfig(str(tiny_model), num_blocks=9), mc, 1024).num_blocks == 9
    half = Engine(tiny_model, EngineConfig(kv_cache_bytes=1 << 20, kv_cache_dtype="float16"))
    assert engine_shape(config, mc, mc.kv_bytes_per_token(half.config.kv_torch_dtype)).num_blocks == \
        half.pool.num_blocks == 2 * engine.pool.num_blocks
    assert profile_args("--kv-cache-dtype", "float16").kv_cache_dtype == "float16"


def test_the_model_is_recorded_without_a_machine_path(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ProfileConfig(str(tiny_model)).model_name == tiny_model.name
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m").symlink_to(tiny_model)
    assert not Path(ProfileConfig(str(tmp_path / "models" / "m")).model_name).is_absolute()
    monkeypatch.chdir(tiny_model.parent)
    assert ProfileConfig(str(tiny_model)).model_name == tiny_model.name
    with pytest.raises(FileNotFoundError):
        ProfileConfig(str(tmp_path / "nothing"))


def test_the_profile_goes_into_one_key_of_the_configmap():
    from splitserve.sim.publish import write_configmap

    calls = []

    class FakeCoreApi:
        def patch_namespaced_config_map(self, name, namespace, body):
            calls.append((name, namespace, body))

    write_configmap("llm-splitserve-profile", "serving", '{"version": 1}', api=FakeCoreApi())
    assert calls == [("llm-splitserve-profile", "serving", {"data": {"profile.json": '{"version": 1}'}})]
    with pytest.raises(ValueError, match="too large"):
        write_configmap("x", "y", "x" * (1 << 20), api=FakeCoreApi())
