"""Where the router keeps the LoRA adapters loaded at runtime (`--lora-store`): in memory (this router only, gone
when it restarts) or in Redis (shared by every router replica and kept across restarts), so that whichever replica
sees a node lacking an adapter loads it there, and whichever sees a node still holding an unloaded one unloads it.

Redis holds a hash of name -> path (plain UTF-8 fields, never pickled) and a sorted set of the names unloaded, by
when: a name stays "unloaded" for UNLOADED_KEEP_S, long enough for any load that was under way when it was unloaded
(a replica's reconciling raced the unload) to have landed and be taken back. Loading a name again clears it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UNLOADED_KEEP_S = 600.0
REDIS_LOADED = "splitserve:lora:runtime"
REDIS_UNLOADED = "splitserve:lora:unloaded"


@dataclass(frozen=True)
class RuntimeLoras:
    """The adapters loaded at runtime (name -> path on the nodes' disks) and the names unloaded lately."""

    paths: dict[str, str] = field(default_factory=dict)
    unloaded: frozenset[str] = frozenset()


class MemoryLoraStore:
    """This router's own record."""

    def __init__(self, clock=time.time):
        self._paths: dict[str, str] = {}
        self._unloaded: dict[str, float] = {}  # name -> when
        self._clock = clock

    async def read(self) -> RuntimeLoras:
        since = self._clock() - UNLOADED_KEEP_S
        self._unloaded = {name: at for name, at in self._unloaded.items() if at > since}
        return RuntimeLoras(dict(self._paths), frozenset(self._unloaded))

    async def add(self, name: str, path: str) -> None:
        self._paths[name] = path
        self._unloaded.pop(name, None)

    async def remove(self, name: str) -> None:
        self._paths.pop(name, None)
        self._unloaded[name] = self._clock()


class RedisLoraStore:
    """The record every router replica given the same Redis shares; a Redis that does not answer is
    StoreUnavailable (a 503 on the load and unload routes, a warning when reconciling)."""

    def __init__(self, url: str, timeout_s: float = 2.0, clock=time.time):
        from router.redis_client import RedisClient

        self.redis = RedisClient(url, "runtime LoRA store", "lora_store_unavailable", timeout_s)
        self._clock = clock

    async def _atomically(self, queue) -> list:
        """The answers of the commands `queue(pipeline)` queues, run as one MULTI/EXEC transaction."""
        async def run(client):
            async with client.pipeline(transaction=True) as pipe:
                queue(pipe)
                return await pipe.execute()
        return await self.redis.run(run)

    async def read(self) -> RuntimeLoras:
        since = self._clock() - UNLOADED_KEEP_S
        _, loaded, unloaded = await self._atomically(lambda pipe: (pipe.zremrangebyscore(REDIS_UNLOADED, "-inf", since),
                                                                   pipe.hgetall(REDIS_LOADED),
                                                                   pipe.zrange(REDIS_UNLOADED, 0, -1)))
        paths = {}
        for name, path in loaded.items():
            try:
                paths[name.decode()] = path.decode()
            except UnicodeDecodeError:
                log.warning("runtime LoRA store: a field of %s is not UTF-8; skipped", REDIS_LOADED)
        return RuntimeLoras(paths, frozenset(name.decode(errors="replace") for name in unloaded))

    async def add(self, name: str, path: str) -> None:
        await self._atomically(lambda pipe: (pipe.hset(REDIS_LOADED, name, path), pipe.zrem(REDIS_UNLOADED, name)))

    async def remove(self, name: str) -> None:
        await self._atomically(lambda pipe: (pipe.hdel(REDIS_LOADED, name),
                                             pipe.zadd(REDIS_UNLOADED, {name: self._clock()})))


def lora_store(where: str):
    """`memory`, or a redis:// URL."""
    return MemoryLoraStore() if where == "memory" else RedisLoraStore(where)
