"""A Redis connection for the router's stores (stored responses, batch files, batches, runtime LoRA adapters): calls
that fail become StoreUnavailable (a 503 naming the store) instead of hanging or leaking the client's errors.
Values are JSON or plain fields, never pickled."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """A store in Redis (stored responses, batch files and batches, runtime LoRA adapters) did not answer: 503 with
    `code`."""

    def __init__(self, message: str, code: str = "response_store_unavailable"):
        super().__init__(message)
        self.code = code


class RedisClient:
    def __init__(self, url: str, what: str, code: str, timeout_s: float = 2.0):
        import redis
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.what, self.code = what, code
        self._unanswered = (redis.RedisError, OSError)

    async def run(self, work: Callable[[object], Awaitable]):
        """`await work(client)`, a Redis failure raised as StoreUnavailable."""
        try:
            return await work(self.client)
        except self._unanswered as exc:
            raise StoreUnavailable(f"the {self.what} (Redis) did not answer: {exc}", self.code) from None

    async def read(self, key: str, parse: Callable[[bytes], object]):
        """`parse(value)` of the key's value; None when there is none, or when it does not parse (a warning)."""
        raw = await self.run(lambda c: c.get(key))
        value = None if raw is None else parse(raw)
        if raw is not None and value is None:
            log.warning("%s: %s does not read back as one; treated as missing", self.what, key)
        return value
