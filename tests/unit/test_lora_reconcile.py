"""The router keeping its runtime LoRA adapters on every healthy node (router/cluster/lora_admin.RuntimeAdapters):
which node is asked to load what, and when again. The nodes' answers are a fake here (the logic under test is the
router's); tests/integration/test_openai_http.py restarts a real node and sees the adapter come back."""

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from router.cluster import lora_admin
from router.cluster.lora_admin import RuntimeAdapters
from router.cluster.lora_store import (REDIS_LOADED, UNLOADED_KEEP_S, MemoryLoraStore, RedisLoraStore,
                                      RuntimeLoras)
from router.cluster.nodes import NodeView
from router.redis_client import StoreUnavailable


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
        await runtime.store.add("x", "/adapters/x")
        runtime.reconcile()
        runtime.reconcile()  # under way: not again
        await asyncio.sleep(0.01)
        assert sorted(made) == [("b:1", "LoadLoraAdapter", "x"), ("c:1", "LoadLoraAdapter", "x")]
        assert registry.refreshes == 2  # after each answer
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
        await runtime.store.add("x", "/adapters/x")
        runtime.reconcile()
        while not made:
            await asyncio.sleep(0)
        await runtime.store.remove("x")  # what unload() does first
        await asyncio.sleep(0.01)
        assert made == [("b:1", "LoadLoraAdapter", "x"), ("b:1", "UnloadLoraAdapter", "x")]

    asyncio.run(scenario())


def test_a_replica_sharing_the_store_keeps_what_another_loaded_and_unloads_what_another_unloaded(calls):
    """Two routers over one store (Redis in a deployment: tests/integration/test_lora_store_redis.py): the one that
    loaded nothing puts the adapter on a node that lacks it, and takes an unloaded one off a node still listing it
    (a load that raced the unload), but not once it is loaded again."""
    made, _ = calls
    registry = FakeRegistry([NodeView("b:1", "decode", healthy=True)])

    async def scenario():
        store = MemoryLoraStore()
        loader = RuntimeAdapters(FakeRegistry([NodeView("a:1", "decode", healthy=True)]), 1.0, store)
        other = RuntimeAdapters(registry, 1.0, store)
        await loader.load("x", "/adapters/x")
        made.clear()
        other.reconcile()
        await asyncio.sleep(0.01)
        assert made == [("b:1", "LoadLoraAdapter", "x")]
        made.clear()
        registry.nodes[0] = NodeView("b:1", "decode", healthy=True, lora_adapters=frozenset({"x"}))
        await store.remove("x")
        other.reconcile()
        await asyncio.sleep(0.01)
        assert made == [("b:1", "UnloadLoraAdapter", "x")]
        made.clear()
        await store.add("x", "/adapters/x2")
        other.reconcile()
        await asyncio.sleep(0.01)
        assert made == []

    asyncio.run(scenario())


def test_an_unloaded_adapter_that_a_restarted_node_loads_from_its_own_flags_stays(calls):
    """A node restarted after an unload serves what its --lora-modules say, however soon: only what it loaded at
    runtime is taken off again."""
    made, _ = calls
    registry = FakeRegistry([NodeView("a:1", "decode", healthy=True, lora_adapters=frozenset({"x", "y"}),
                                      startup_lora_adapters=frozenset({"x"}))])

    async def scenario():
        runtime = RuntimeAdapters(registry, 1.0)
        await runtime.store.add("x", "/adapters/x")
        await runtime.store.add("y", "/adapters/y")
        await runtime.store.remove("x")
        await runtime.store.remove("y")
        runtime.reconcile()
        await asyncio.sleep(0.01)
        assert made == [("a:1", "UnloadLoraAdapter", "y")]

    asyncio.run(scenario())


class DownStore(MemoryLoraStore):
    """A store whose Redis stops answering once `down` is set."""

    down = False

    async def read(self):
        if self.down:
            raise StoreUnavailable("the runtime LoRA store (Redis) did not answer", "lora_store_unavailable")
        return await super().read()

    async def add(self, name, path):
        await self.read()
        await super().add(name, path)

    async def remove(self, name):
        await self.read()
        await super().remove(name)


def test_a_store_that_does_not_answer_changes_nothing(calls, caplog):
    """Loading when the store cannot record it is undone on the nodes (a 503 to the client); reconciling without
    the store asks no node anything."""
    made, _ = calls
    registry = FakeRegistry([NodeView("b:1", "decode", healthy=True), NodeView("c:1", "prefill", healthy=True)])

    async def scenario():
        store = DownStore()
        runtime = RuntimeAdapters(registry, 1.0, store)
        store.down = True
        with pytest.raises(StoreUnavailable):
            await runtime.load("x", "/adapters/x")
        calls_made = [(n, m, "x") for m in ("LoadLoraAdapter", "UnloadLoraAdapter") for n in ("b:1", "c:1")]
        assert sorted(made) == sorted(calls_made)
        made.clear()
        for _ in range(3):
            runtime.reconcile()
            await asyncio.sleep(0.01)
        assert made == [] and caplog.text.count("not reconciled") == 1  # said once, not every refresh

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_stores_record_loads_and_recent_unloads_alike(kind, request):
    now = [1000.0]
    if kind == "memory":
        store = MemoryLoraStore(clock=lambda: now[0])
    else:
        store = RedisLoraStore(request.getfixturevalue("redis_url"), clock=lambda: now[0])

    async def scenario():
        assert await store.read() == RuntimeLoras()
        await store.add("x", "/a/x")
        await store.add("y", "/a/ÿ")
        await store.remove("y")
        assert await store.read() == RuntimeLoras({"x": "/a/x"}, frozenset({"y"}))
        now[0] += UNLOADED_KEEP_S + 1
        await store.remove("x")
        await store.add("y", "/a/y2")
        assert await store.read() == RuntimeLoras({"y": "/a/y2"}, frozenset({"x"}))
        now[0] += UNLOADED_KEEP_S + 1
        assert await store.read() == RuntimeLoras({"y": "/a/y2"})

    asyncio.run(scenario())


def test_a_redis_field_that_is_not_text_is_skipped(redis_url, caplog):
    import redis

    redis.Redis.from_url(redis_url).hset(REDIS_LOADED, mapping={"x": "/a/x", "bad": b"\xff\xfe"})
    loras = asyncio.run(RedisLoraStore(redis_url).read())
    assert loras.paths == {"x": "/a/x"} and "not UTF-8" in caplog.text
