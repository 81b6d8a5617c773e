"""Stored responses of the Responses API, for `previous_response_id` and `GET /v1/responses/{id}`.

Two stores with one (async) interface. `ResponseStore` keeps them in the router's memory, as vLLM
does: bounded by count and by size, the least recently used dropped first, gone when the router
restarts and not shared between router replicas. `RedisResponseStore` (`--responses-store
redis://...`) keeps them in Redis as JSON (never pickled; a value that does not read back as a
stored response counts as missing), each for `--responses-ttl-s`, so every router replica that
names the same Redis continues the same conversations. Each entry is the response object, the
conversation it ends (the chat messages of its input after any earlier stored turns, and its
answer, without the instructions, which do not carry over, as on OpenAI's API) and its request's
input items.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_TTL_S = 30 * 24 * 3600  # OpenAI keeps stored responses 30 days
MAX_ENTRY_BYTES = 16 << 20
REDIS_PREFIX = "splitserve:response:"


@dataclass(frozen=True)
class StoredResponse:
    response: dict
    conversation: list[dict]  # chat messages, ending with the answer
    input_items: list[dict] = field(default_factory=list)  # the request's own input, as input_items lists it

    def to_json(self) -> str:
        return json.dumps({"response": self.response, "conversation": self.conversation,
                           "input_items": self.input_items})

    @classmethod
    def from_json(cls, raw: bytes | str) -> "StoredResponse | None":
        """None unless `raw` is what to_json wrote."""
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("response"), dict) or \
                not all(isinstance(data.get(k), list) and all(isinstance(x, dict) for x in data[k])
                        for k in ("conversation", "input_items")):
            return None
        return cls(data["response"], data["conversation"], data["input_items"])


class ResponseStore:
    """In the router's memory."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self.num_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def put(self, entry: StoredResponse) -> None:
        size = len(entry.to_json())
        if size > self.max_bytes:
            return
        await self.delete(entry.response["id"])
        self._entries[entry.response["id"]] = (entry, size)
        self.num_bytes += size
        while len(self._entries) > self.max_entries or self.num_bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.num_bytes -= dropped

    async def get(self, response_id: str) -> StoredResponse | None:
        found = self._entries.get(response_id)
        if found is None:
            return None
        self._entries.move_to_end(response_id)
        return found[0]

    async def delete(self, response_id: str) -> bool:
        found = self._entries.pop(response_id, None)
        if found is not None:
            self.num_bytes -= found[1]
        return found is not None


class RedisResponseStore:
    """In Redis, shared by router replicas; StoreUnavailable when Redis does not answer."""

    def __init__(self, url: str, ttl_s: float = DEFAULT_TTL_S, timeout_s: float = 2.0):
        from router.redis_client import RedisClient

        self.ttl_s = ttl_s
        self.redis = RedisClient(url, "response store", "response_store_unavailable", timeout_s)
        self.client = self.redis.client

    async def put(self, entry: StoredResponse) -> None:
        value = entry.to_json()
        if len(value) > MAX_ENTRY_BYTES:
            return
        key = REDIS_PREFIX + entry.response["id"]
        await self.redis.run(lambda c: c.set(key, value, ex=max(1, int(self.ttl_s))))

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self.redis.read(REDIS_PREFIX + response_id, StoredResponse.from_json)

    async def delete(self, response_id: str) -> bool:
        return bool(await self.redis.run(lambda c: c.delete(REDIS_PREFIX + response_id)))
