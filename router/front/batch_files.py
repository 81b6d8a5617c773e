"""OpenAI's Files API, as much of it as the Batch API needs: `POST /v1/files` (multipart: `file`,
`purpose` "batch"), `GET /v1/files` (`purpose`, `limit`, `order`, `after`), `GET /v1/files/{id}`,
`GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.

Two stores with one (async) interface, as for stored responses. `FileStore` keeps the files in the
router's memory: gone when the router restarts, not shared between router replicas.
`RedisFileStore` (`--batch-store redis://...`) keeps them in Redis (plain hash fields, never
pickled), shared by every replica that names the same Redis and kept across restarts until deleted.
Either way all files together (uploads and the batches' outputs) take at most
`--batch-storage-bytes`: an upload that does not fit is a 413, and nothing is evicted behind a
caller's back. Each file belongs to the API key that uploaded it (or created the batch that wrote
it): another key sees no such file (404), and lists only its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from router.front.http_errors import ApiError
from router.front.pages import cursor_page

DEFAULT_STORAGE_BYTES = 256 << 20
UPLOAD_PURPOSES = ("batch",)
OUTPUT_PURPOSE = "batch_output"
REDIS_PREFIX = "splitserve:file:"
FIELDS = ("owner", "filename", "purpose", "created_at")


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    purpose: str
    size: int
    created_at: int
    data: bytes | None = None  # None when only the file's card was read

    def card(self) -> dict:
        """The file object of OpenAI's API."""
        return {"id": self.id, "object": "file", "bytes": self.size, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


def new_file(owner: str, filename: str, purpose: str, data: bytes) -> StoredFile:
    return StoredFile(f"file-{uuid.uuid4().hex}", owner, filename, purpose, len(data), int(time.time()), data)


def not_found(file_id: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"no file with id {file_id!r}", param=param, code="file_not_found")


def too_big(size: int, max_bytes: int, free: int) -> ApiError:
    return ApiError(413, f"the file of {size} bytes does not fit: the router keeps at most {max_bytes} bytes of "
                    f"files and {free} are free (delete files, or raise --batch-storage-bytes)",
                    code="request_too_large")


def page_of(files: list[StoredFile], purpose: str | None, limit: int, order: str, after: str | None) -> dict:
    """A page of `files` (oldest first), newest first with `order` desc, after the file `after`."""
    if not 1 <= limit <= 10000 or order not in ("asc", "desc"):
        raise ApiError(400, "limit must be in [1, 10000] and order asc or desc", param="limit")
    files = [f for f in files if purpose in (None, f.purpose)]
    return cursor_page([f.card() for f in (files if order == "asc" else files[::-1])], limit, after, "file")


class FileStore:
    """In the router's memory."""

    def __init__(self, max_bytes: int = DEFAULT_STORAGE_BYTES):
        if max_bytes < 1:
            raise ValueError(f"--batch-storage-bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._files: dict[str, StoredFile] = {}

    async def free_bytes(self) -> int:
        return max(0, self.max_bytes - sum(f.size for f in self._files.values()))

    async def add(self, owner: str, filename: str, purpose: str, data: bytes, output: bool = False) -> StoredFile:
        """Keep a file; an upload (not `output`) over the free space is a 413."""
        free = await self.free_bytes()
        if not output and len(data) > free:
            raise too_big(len(data), self.max_bytes, free)
        stored = new_file(owner, filename, purpose, data)
        self._files[stored.id] = stored
        return stored

    async def get(self, owner: str, file_id: str, param: str | None = None) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None or stored.owner != owner:
            raise not_found(file_id, param)
        return stored

    async def delete(self, owner: str, file_id: str) -> None:
        await self.get(owner, file_id)
        del self._files[file_id]

    async def listed(self, owner: str, purpose: str | None, limit: int, order: str, after: str | None) -> dict:
        return page_of([f for f in self._files.values() if f.owner == owner], purpose, limit, order, after)


class RedisFileStore:
    """In Redis: a hash per file (its fields and `data`), a sorted set of each owner's file ids by creation,
    and the bytes of all files in one counter; StoreUnavailable when Redis does not answer."""

    def __init__(self, url: str, max_bytes: int = DEFAULT_STORAGE_BYTES, timeout_s: float = 2.0):
        from router.redis_client import RedisClient

        if max_bytes < 1:
            raise ValueError(f"--batch-storage-bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.redis = RedisClient(url, "batch store", "batch_store_unavailable", timeout_s)
        self._bytes = REDIS_PREFIX + "bytes"

    async def free_bytes(self) -> int:
        used = await self.redis.run(lambda c: c.get(self._bytes))
        return max(0, self.max_bytes - int(used or 0))

    async def add(self, owner: str, filename: str, purpose: str, data: bytes, output: bool = False) -> StoredFile:
        used = await self.redis.run(lambda c: c.incrby(self._bytes, len(data)))
        if not output and used > self.max_bytes:  # taken back: the counter is shared, so reserve, then check
            await self.redis.run(lambda c: c.decrby(self._bytes, len(data)))
            raise too_big(len(data), self.max_bytes, max(0, self.max_bytes - used + len(data)))
        stored = new_file(owner, filename, purpose, data)
        fields = {"owner": owner, "filename": filename, "purpose": purpose, "created_at": stored.created_at,
                  "data": data}

        async def keep(c):
            async with c.pipeline(transaction=True) as pipe:
                pipe.hset(REDIS_PREFIX + stored.id, mapping=fields)
                pipe.zadd(self._owned(owner), {stored.id: time.time()})
                await pipe.execute()

        await self.redis.run(keep)
        return stored

    async def get(self, owner: str, file_id: str, param: str | None = None) -> StoredFile:
        key = REDIS_PREFIX + file_id
        values = await self.redis.run(lambda c: c.hmget(key, *FIELDS, "data"))
        stored = _read(file_id, values[:-1], values[-1])
        if stored is None or stored.owner != owner:
            raise not_found(file_id, param)
        return stored

    async def delete(self, owner: str, file_id: str) -> None:
        stored = await self.get(owner, file_id)

        async def drop(c):
            async with c.pipeline(transaction=True) as pipe:
                pipe.delete(REDIS_PREFIX + file_id)
                pipe.zrem(self._owned(owner), file_id)
                pipe.decrby(self._bytes, stored.size)
                await pipe.execute()

        await self.redis.run(drop)

    async def listed(self, owner: str, purpose: str | None, limit: int, order: str, after: str | None) -> dict:
        ids = [i.decode() for i in await self.redis.run(lambda c: c.zrange(self._owned(owner), 0, -1))]

        async def cards(c):
            async with c.pipeline(transaction=False) as pipe:
                for file_id in ids:
                    pipe.hmget(REDIS_PREFIX + file_id, *FIELDS)
                    pipe.hstrlen(REDIS_PREFIX + file_id, "data")
                return await pipe.execute()

        answers = await self.redis.run(cards) if ids else []
        files = [_read(i, answers[2 * k], None, answers[2 * k + 1]) for k, i in enumerate(ids)]
        return page_of([f for f in files if f is not None], purpose, limit, order, after)

    @staticmethod
    def _owned(owner: str) -> str:
        return f"{REDIS_PREFIX}owner:{owner}"


def _read(file_id: str, values: list, data: bytes | None, size: int | None = None) -> StoredFile | None:
    """A file from its hash fields (bytes, as Redis returns them); None when missing or malformed."""
    if any(v is None for v in values):
        return None
    try:
        owner, filename, purpose, created_at = (v.decode() for v in values)
        return StoredFile(file_id, owner, filename, purpose, len(data) if data is not None else int(size),
                          int(created_at), data)
    except (UnicodeDecodeError, ValueError, TypeError):
        return None


async def read_upload(headers, body: bytes) -> tuple[str, str, bytes]:
    """(filename, purpose, content) of a `multipart/form-data` upload; 400 naming what is wrong."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    if not headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "upload the file as multipart/form-data with fields `file` and `purpose`")

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=4).parse()
    except MultiPartException as exc:
        raise ApiError(400, f"the multipart body does not parse: {exc.message}") from exc
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "the field `file` (a file) is required", param="file")
    if purpose not in UPLOAD_PURPOSES:
        raise ApiError(400, f"purpose must be one of {', '.join(UPLOAD_PURPOSES)} (this server keeps files for "
                       f"the Batch API only), got {purpose!r}", param="purpose")
    content = await upload.read()
    await form.close()
    return upload.filename or "upload.jsonl", purpose, content
