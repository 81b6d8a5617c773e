"""A node's synchronous Redis connection (redis-py: connection pool, pipelines), shared by its stores in Redis (the
chunk cache's Redis tier, the prefix store): each call queues its commands on one pipeline, one round trip. Any
connection error marks Redis down for `retry_after_s` (calls fail fast with TierUnavailable meanwhile) and drops the
pooled connections, so a dead Redis costs a request nothing and a restarted one is reached again."""

from __future__ import annotations

import time

import redis


class TierUnavailable(Exception):
    """Redis cannot be reached now; the caller treats it as a miss."""


class RedisPipe:
    def __init__(self, url: str, timeout_s: float = 1.0, retry_after_s: float = 1.0, max_connections: int = 16,
                 connect_timeout_s: float | None = None):
        """`timeout_s`: for any one socket read or write of a call (connecting: `connect_timeout_s`, by default
        the same)."""
        self.client = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s or timeout_s,
                                           socket_timeout=timeout_s, max_connections=max_connections)
        self.retry_after_s = retry_after_s
        self._down_until = 0.0

    def run(self, build) -> list:
        """Runs the commands build(pipeline) queues, in one round trip."""
        if self.marked_down:
            raise TierUnavailable("redis marked down")
        try:
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            return pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_after_s
            self.client.connection_pool.disconnect()  # no stale connection survives a restart of Redis
            raise TierUnavailable(str(exc)) from exc

    @property
    def marked_down(self) -> bool:
        """Whether calls fail fast now (a call failed less than retry_after_s ago)."""
        return time.monotonic() < self._down_until

    def ping(self) -> bool:
        try:
            return bool(self.run(lambda p: p.ping())[0])
        except TierUnavailable:
            return False
