"""The router keeping its runtime LoRA adapters on every healthy node (router/cluster/lora_admin.RuntimeAdapters):
which node is asked to load what, and when again. The nodes' answers are a fake here (the logic under test is the
router's); tests/integration/test_openai_http.py restarts a real node and sees the adapter come back."""

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from router.cluster import lora_admin
from router.cluster.lora_admin import RuntimeAdapters
from router.cluster.nodes import NodeView


class FakeRegistry:
    def __init__(self, nodes: list[NodeView]):
        self.nodes, self.on_refresh, self.refreshes = nodes, [], 0

    def snapshot(self) -> list[NodeView]:
        return list(self.nodes)

    async def refresh(self) -> None:
        self.refreshes += 1


class FakeError(grpc.aio.AioRpcError):
    def __init__(self, details: str):
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, None, None, details)


@pytest.fixture
def calls(monkeypatch):
    """(node, method, name) of every call; a node named in `fail` refuses to load."""
    made, fail = [], set()

    async def fake_call(registry, address, method, name, path, timeout_s):
        made.append((address, method, name))
        await asyncio.sleep(0)
        return FakeError("no such LoRA adapter") if method == "LoadLoraAdapter" and address in fail else None

    monkeypatch.setattr(lora_admin, "_call", fake_call)
    return made, fail


def test_a_node_lacking_an_adapter_is_asked_once_and_a_failing_one_again_after_retry_s(calls, monkeypatch):
    made, fail = calls
    now = [100.0]
    monkeypatch.setattr(lora_admin, "time", SimpleNamespace(monotonic=lambda: now[0]))  # the event loop keeps its own
    registry = FakeRegistry([NodeView("a:1", "decode", healthy=True, lora_adapters=frozenset({"x"})),
                             NodeView("b:1", "decode", healthy=True), NodeView("c:1", "prefill", healthy=True),
                             NodeView("d:1", "prefill", healthy=False)])
    fail.add("c:1")

    async def scenario():
        runtime = RuntimeAdapters(registry, timeout_s=1.0, retry_s=30.0)
        assert registry.on_refresh == [runtime.reconcile]
        runtime.paths["x"] = "/adapters/x"
        runtime.reconcile()
        runtime.reconcile()  # asked already: not again while it loads
        await asyncio.sleep(0.01)
        assert sorted(made) == [("b:1", "LoadLoraAdapter", "x"), ("c:1", "LoadLoraAdapter", "x")]
        assert registry.refreshes == 1  # after the one that loaded it
        made.clear()
        registry.nodes[1] = NodeView("b:1", "decode", healthy=True, lora_adapters=frozenset({"x"}))
        now[0] += 29.0
        runtime.reconcile()
        await asyncio.sleep(0.01)
        assert made == []  # c failed 29 s ago
        now[0] += 2.0
        runtime.reconcile()
        await asyncio.sleep(0.01)
        assert made == [("c:1", "LoadLoraAdapter", "x")]

    asyncio.run(scenario())


def test_an_adapter_unloaded_while_a_node_loads_it_is_unloaded_there_too(calls):
    made, _ = calls
    registry = FakeRegistry([NodeView("b:1", "decode", healthy=True)])

    async def scenario():
        runtime = RuntimeAdapters(registry, timeout_s=1.0)
        runtime.paths["x"] = "/adapters/x"
        runtime.reconcile()
        del runtime.paths["x"]  # what unload() does first
        await asyncio.sleep(0.01)
        assert made == [("b:1", "LoadLoraAdapter", "x"), ("b:1", "UnloadLoraAdapter", "x")]

    asyncio.run(scenario())
