"""Nodes sharing a host's cores (runtime/cpu_share.py): a node alone gets every core, busy nodes split
them, an idle node gives its share back; the thread count really changes; bad specs are clear errors."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
import torch

from node.config import ChunkPathConfig, KVConfig, NodeConfig
from splitserve.engine import EngineConfig
from splitserve.runtime.cpu_share import MAX_SLOTS, CpuShare, parse_cpu_share, share_file
from tests.support.cluster import wait_until


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_busy_nodes_split_the_cores_and_an_idle_one_gives_its_share_back(tmp_path, restore_threads):
    path = share_file(tmp_path)
    prefill, decode = CpuShare(path, 0, 4), CpuShare(path, 1, 4)
    assert prefill.claim() == 4 and torch.get_num_threads() == 4  # alone on the host
    assert decode.claim() == 2 and torch.get_num_threads() == 2
    assert prefill.claim() == 2  # its next layer sees the decode node
    decode.release()
    assert prefill.claim() == 4 and torch.get_num_threads() == 4
    third, fourth, fifth = (CpuShare(path, slot, 4) for slot in (2, 3, 4))
    for share in (decode, third, fourth, fifth):
        share.claim()
    assert prefill.claim() == 1  # never below one thread
    for share in (prefill, decode, third, fourth, fifth):
        share.close()


def test_the_first_node_makes_the_file_and_later_ones_map_the_same_bytes(tmp_path, restore_threads):
    path = str(tmp_path / "share")
    first = CpuShare(path, 3, 2)
    first.claim()
    second = CpuShare(path, 5, 2)
    assert second.claim() == 1
    assert _slots(tmp_path / "share")[3] == os.getpid() and len(_slots(tmp_path / "share")) == MAX_SLOTS
    first.close()
    second.close()


def test_a_node_that_died_mid_step_loses_its_share(tmp_path, restore_threads):
    path = share_file(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = CpuShare(path, 1, 2)
    ghost._pids[1] = dead.pid  # it died while stepping: its slot still says busy
    alive = CpuShare(path, 0, 2, check_dead_every_s=0.0)
    assert alive.claim() == 2 and _slots(tmp_path / "cpu-share")[1] == 0
    ghost._pids[1] = os.getpid()  # a live process in the slot keeps it
    assert alive.claim() == 1
    alive.close()
    ghost.close()


def _slots(path) -> list[int]:
    return list(memoryview(path.read_bytes()).cast("i"))


@pytest.mark.parametrize("spec", ["share", "share:", ":1", "share:-1", f"share:{MAX_SLOTS}", "share:x"])
def test_a_bad_spec_names_the_flag(spec):
    with pytest.raises(ValueError, match="--cpu-share must be FILE:SLOT"):
        parse_cpu_share(spec)


def test_a_good_spec_parses():
    assert parse_cpu_share("/tmp/a:b/share:7") == ("/tmp/a:b/share", 7)


class _ThreadsPerLayer:
    """StepHooks recording the engine thread's torch threads after each layer."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def make_layer_hook(self, plan):
        return lambda layer: self.seen.append(torch.get_num_threads())

    def after_step(self, engine, outputs) -> None:
        pass


def test_the_engine_loop_claims_before_each_step_and_layer_and_releases_when_idle(tiny_model, tmp_path):
    from splitserve.engine import Engine, EngineConfig, SamplingParams
    from splitserve.runtime.engine_loop import EngineLoop
    from splitserve.runtime.output_stream import run_streaming

    path = share_file(tmp_path)
    other = CpuShare(path, 1, 2)
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=4))
    hooks = _ThreadsPerLayer()
    loop = EngineLoop(engine, hooks, cpu_share=CpuShare(path, 0, 2))
    loop.start()

    async def generate(rid: str) -> list:
        admit = lambda e: e.add_request(list(range(5, 15)), SamplingParams(max_tokens=3, ignore_eos=True), rid)
        return [o async for o in run_streaming(loop, rid, admit)]

    try:
        asyncio.run(generate("alone"))
        alone, hooks.seen = hooks.seen, []
        other._pids[1] = other.pid  # another node steps now (set by hand: claim() would change this thread's count)
        asyncio.run(generate("shared"))
        shared = hooks.seen
        assert wait_until(lambda: _slots(tmp_path / "cpu-share")[0] == 0, 5.0, 0.005)  # idle: its share given back
    finally:
        loop.stop()
    assert set(alone) == {2} and set(shared) == {1} and len(shared) == len(alone) > 0
    other.close()


def test_a_node_refuses_a_share_file_in_a_missing_folder(tmp_path):
    parts = ("decode", "model", EngineConfig(), KVConfig(), ChunkPathConfig())
    with pytest.raises(ValueError, match="--cpu-share: the folder of .* does not exist"):
        NodeConfig(*parts, cpu_share=f"{tmp_path / 'missing' / 'share'}:0")
    assert NodeConfig(*parts, cpu_share=f"{tmp_path / 'share'}:0").cpu_share.endswith("share:0")
