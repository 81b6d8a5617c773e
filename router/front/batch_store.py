"""Batches' state: the batch object of OpenAI's API and where it is kept.

`BatchStore` keeps batches in the router's memory (the router that runs them). `RedisBatchStore`
(`--batch-store redis://...`) keeps each as JSON (never pickled; a value that does not read back is
missing) with a sorted set of each owner's batches, each answered line's result, and a claim on the
batch by the replica running it, so every router replica answers for every batch: the replica that
created a batch claims and runs it, renewing its claim and writing its state every half second;
another replica asked to cancel it leaves a flag the runner picks up; a claim not renewed for
`--batch-claim-s` (30; its router stopped: a crash, a rolling update) lapses, and the next replica that reads the
batch, or that sweeps the set of unfinished batches (each replica does every half claim period), claims it
and resumes it, sending only the lines without a stored result (a line in flight when its runner stopped is
sent again: at least once). So a batch finishes whether or not anyone asks about it, as long as one replica runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from router.front.batch_lines import CreateBatch

FINAL = ("completed", "failed", "cancelled", "expired")
MAX_BATCHES = 10_000  # in memory; the oldest finished are forgotten first
REDIS_PREFIX = "splitserve:batch:"
UNFINISHED = REDIS_PREFIX + "unfinished"  # a set of the batches not yet final: what the replicas sweep
CLAIM_S = 30.0
STATE = ("id", "owner", "created_at", "expires_at", "status", "times", "total", "completed", "failed", "errors",
         "output_file_id", "error_file_id")
# renew or drop a claim only if it is still ours (KEYS[1] the claim, ARGV[1] our token, ARGV[2] ms or 0: drop)
_IF_OURS = """if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('del', KEYS[1]) end
return redis.call('pexpire', KEYS[1], ARGV[2])"""


@dataclass
class Batch:
    id: str
    owner: str
    request: CreateBatch
    created_at: int
    expires_at: int
    status: str = "validating"
    times: dict = field(default_factory=dict)  # in_progress, finalizing, completed, ... -> Unix seconds
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # where it runs: set on cancel
    abandoned: bool = field(default=False, repr=False)  # where it ran: its claim lapsed, another runner has it

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def card(self) -> dict:
        """The batch object of OpenAI's API."""
        times = {f"{name}_at": self.times.get(name) for name in
                 ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")}
        return {"id": self.id, "object": "batch", "endpoint": self.request.endpoint,
                "errors": {"object": "list", "data": self.errors} if self.errors else None,
                "input_file_id": self.request.input_file_id, "completion_window": self.request.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "expires_at": self.expires_at, **times,
                "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
                "metadata": self.request.metadata}

    def enter(self, status: str) -> None:
        self.status = status
        self.times[status] = int(time.time())

    def to_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in STATE} | {"request": self.request.model_dump()})

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Batch | None":
        """None unless `raw` is what to_json wrote."""
        try:
            data = json.loads(raw)
            return cls(request=CreateBatch.model_validate(data["request"]), **{name: data[name] for name in STATE})
        except (ValueError, TypeError, KeyError):
            return None


class BatchStore:
    """In the router's memory: the batch objects themselves, which their runner changes in place."""

    sweep_s = None  # its batches run in this router: no other's to resume

    def __init__(self):
        self._batches: dict[str, Batch] = {}
        self._results: dict[str, dict[int, dict]] = {}
        self._claims: dict[str, str] = {}

    async def save(self, batch: Batch) -> None:
        if batch.id not in self._batches:
            finished = [b.id for b in self._batches.values() if b.final]
            for batch_id in finished[:max(0, len(self._batches) + 1 - MAX_BATCHES)]:
                del self._batches[batch_id]
        self._batches[batch.id] = batch

    async def load(self, batch_id: str) -> Batch | None:
        return self._batches.get(batch_id)

    async def owned(self, owner: str) -> list[Batch]:
        """The owner's batches, oldest first."""
        return [b for b in self._batches.values() if b.owner == owner]

    async def unfinished(self) -> list[str]:
        return []

    async def request_cancel(self, batch_id: str) -> None:
        """Unused in memory: a batch in memory runs in this router, which cancels it itself."""

    async def cancel_requested(self, batch_id: str) -> bool:
        return False

    async def claim(self, batch_id: str, token: str) -> bool:
        return self._claims.setdefault(batch_id, token) == token

    async def renew(self, batch_id: str, token: str) -> bool:
        return self._claims.get(batch_id) == token

    async def release(self, batch_id: str, token: str) -> None:
        if self._claims.get(batch_id) == token:
            del self._claims[batch_id]

    async def save_result(self, batch_id: str, index: int, result: dict) -> None:
        self._results.setdefault(batch_id, {})[index] = result

    async def results(self, batch_id: str) -> dict[int, dict]:
        return dict(self._results.get(batch_id, {}))

    async def drop_results(self, batch_id: str) -> None:
        self._results.pop(batch_id, None)


class RedisBatchStore:
    """In Redis, shared by router replicas; StoreUnavailable when Redis does not answer."""

    def __init__(self, url: str, claim_s: float = CLAIM_S, timeout_s: float = 2.0):
        from router.redis_client import RedisClient

        if claim_s <= 0:
            raise ValueError(f"--batch-claim-s must be > 0, got {claim_s}")
        self.redis = RedisClient(url, "batch store", "batch_store_unavailable", timeout_s)
        self.claim_ms = int(claim_s * 1000)
        self.sweep_s = claim_s / 2  # how often a replica looks for batches whose runner stopped

    async def save(self, batch: Batch) -> None:
        value = batch.to_json()

        async def write(c):
            async with c.pipeline(transaction=True) as pipe:
                pipe.set(REDIS_PREFIX + batch.id, value)
                pipe.zadd(self._owned(batch.owner), {batch.id: batch.created_at})
                (pipe.srem if batch.final else pipe.sadd)(UNFINISHED, batch.id)
                await pipe.execute()

        await self.redis.run(write)

    async def load(self, batch_id: str) -> Batch | None:
        return await self.redis.read(REDIS_PREFIX + batch_id, Batch.from_json)

    async def owned(self, owner: str) -> list[Batch]:
        ids = await self.redis.run(lambda c: c.zrange(self._owned(owner), 0, -1))
        raws = await self.redis.run(lambda c: c.mget([REDIS_PREFIX + i.decode() for i in ids])) if ids else []
        return [b for b in (Batch.from_json(r) for r in raws if r is not None) if b is not None]

    async def unfinished(self) -> list[str]:
        """The ids of the batches not yet final, whoever runs them."""
        return sorted(i.decode() for i in await self.redis.run(lambda c: c.smembers(UNFINISHED)))

    async def request_cancel(self, batch_id: str) -> None:
        await self.redis.run(lambda c: c.set(self._key(batch_id, "cancel"), 1))

    async def cancel_requested(self, batch_id: str) -> bool:
        return bool(await self.redis.run(lambda c: c.exists(self._key(batch_id, "cancel"))))

    async def claim(self, batch_id: str, token: str) -> bool:
        """True when this runner (`token`) now holds the batch: no claim was held, or one lapsed."""
        key = self._key(batch_id, "runner")
        return bool(await self.redis.run(lambda c: c.set(key, token, nx=True, px=self.claim_ms)))

    async def renew(self, batch_id: str, token: str) -> bool:
        """False when the claim lapsed and another runner took the batch."""
        key = self._key(batch_id, "runner")
        return bool(await self.redis.run(lambda c: c.eval(_IF_OURS, 1, key, token, self.claim_ms)))

    async def release(self, batch_id: str, token: str) -> None:
        await self.redis.run(lambda c: c.eval(_IF_OURS, 1, self._key(batch_id, "runner"), token, 0))

    async def save_result(self, batch_id: str, index: int, result: dict) -> None:
        await self.redis.run(lambda c: c.hset(self._key(batch_id, "results"), str(index), json.dumps(result)))

    async def results(self, batch_id: str) -> dict[int, dict]:
        """The answered lines' results by index (a value that does not read back is left out: sent again)."""
        raw = await self.redis.run(lambda c: c.hgetall(self._key(batch_id, "results")))
        results = {}
        for index, value in raw.items():
            try:
                result = json.loads(value)
                if isinstance(result, dict):
                    results[int(index)] = result
            except ValueError:
                continue
        return results

    async def drop_results(self, batch_id: str) -> None:
        await self.redis.run(lambda c: c.delete(self._key(batch_id, "results")))

    @staticmethod
    def _key(batch_id: str, part: str) -> str:
        """The key of one of a batch's records: runner (its claim), cancel (the flag), results (per line)."""
        return f"{REDIS_PREFIX}{batch_id}:{part}"

    @staticmethod
    def _owned(owner: str) -> str:
        return f"{REDIS_PREFIX}owner:{owner}"
