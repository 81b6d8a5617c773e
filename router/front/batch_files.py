"""OpenAI's Files API, as much of it as the Batch API needs: `POST /v1/files` (multipart: `file`,
`purpose` "batch"), `GET /v1/files` (`purpose`, `limit`, `order`, `after`), `GET /v1/files/{id}`,
`GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.

Files live in the router's memory, like stored responses: gone when the router restarts, not
shared between router replicas, and bounded: all files together (uploads and the batches'
outputs) take at most `--batch-storage-bytes`; an upload that does not fit is a 413, and
nothing is evicted behind a caller's back. Each file belongs to the API key that uploaded it
(or wrote the batch that made it): another key sees no such file (404), and lists only its own.
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


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def card(self) -> dict:
        """The file object of OpenAI's API."""
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


class FileStore:
    def __init__(self, max_bytes: int = DEFAULT_STORAGE_BYTES):
        if max_bytes < 1:
            raise ValueError(f"--batch-storage-bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self._files: dict[str, StoredFile] = {}

    @property
    def used_bytes(self) -> int:
        return sum(len(f.data) for f in self._files.values())

    @property
    def free_bytes(self) -> int:
        return max(0, self.max_bytes - self.used_bytes)

    def add(self, owner: str, filename: str, purpose: str, data: bytes, output: bool = False) -> StoredFile:
        """Keep a file; an upload (not `output`) over the free space is a 413."""
        if not output and len(data) > self.free_bytes:
            raise ApiError(413, f"the file of {len(data)} bytes does not fit: the router keeps at most "
                           f"{self.max_bytes} bytes of files and {self.free_bytes} are free (delete files, or "
                           "raise --batch-storage-bytes)", code="request_too_large")
        stored = StoredFile(f"file-{uuid.uuid4().hex}", owner, filename, purpose, data, int(time.time()))
        self._files[stored.id] = stored
        return stored

    def get(self, owner: str, file_id: str, param: str | None = None) -> StoredFile:
        stored = self._files.get(file_id)
        if stored is None or stored.owner != owner:
            raise ApiError(404, f"no file with id {file_id!r}", param=param, code="file_not_found")
        return stored

    def delete(self, owner: str, file_id: str) -> None:
        self.get(owner, file_id)
        del self._files[file_id]

    def listed(self, owner: str, purpose: str | None, limit: int, order: str, after: str | None) -> dict:
        """A page of the owner's files, newest first (`order` desc) or oldest first, after the file `after`."""
        if not 1 <= limit <= 10000 or order not in ("asc", "desc"):
            raise ApiError(400, "limit must be in [1, 10000] and order asc or desc", param="limit")
        files = [f for f in self._files.values() if f.owner == owner and purpose in (None, f.purpose)]
        files = files if order == "asc" else files[::-1]  # insertion order is creation order
        return cursor_page([f.card() for f in files], limit, after, "file")


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
