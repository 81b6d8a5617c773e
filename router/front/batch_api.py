"""The routes of OpenAI's Files and Batch APIs (batch_files.py, batches.py), behind the API key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from router.front.batch_files import read_upload
from router.front.batch_lines import CreateBatch


class BatchEndpoints:
    def __init__(self, endpoints):
        self.endpoints, self.ctx = endpoints, endpoints.ctx

    def owner(self, request: Request) -> str:
        return self.endpoints.caller(request)

    async def upload(self, request: Request) -> dict:
        """POST /v1/files: the body may take what the file store has free."""
        body = await self.endpoints.body(request, await self.ctx.files.free_bytes())
        filename, purpose, content = await read_upload(request.headers, body)
        return (await self.ctx.files.add(self.owner(request), filename, purpose, content)).card()

    async def list_files(self, request: Request, purpose: str | None = None, limit: int = 10000,
                         order: str = "desc", after: str | None = None) -> dict:
        return await self.ctx.files.listed(self.owner(request), purpose, limit, order, after)

    async def file(self, request: Request, file_id: str) -> dict:
        return (await self.ctx.files.get(self.owner(request), file_id)).card()

    async def content(self, request: Request, file_id: str) -> Response:
        stored = await self.ctx.files.get(self.owner(request), file_id)
        return Response(stored.data, media_type="application/jsonl")

    async def delete_file(self, request: Request, file_id: str) -> dict:
        await self.ctx.files.delete(self.owner(request), file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def create(self, request: Request) -> dict:
        body = CreateBatch.parse(await self.endpoints.body(request))
        return (await self.ctx.batches.create(self.owner(request), body)).card()

    async def batch(self, request: Request, batch_id: str) -> dict:
        return (await self.ctx.batches.get(self.owner(request), batch_id)).card()

    async def list_batches(self, request: Request, limit: int = 20, after: str | None = None) -> dict:
        return await self.ctx.batches.listed(self.owner(request), limit, after)

    async def cancel(self, request: Request, batch_id: str) -> dict:
        await self.endpoints.body(request)  # none is expected; a huge one is still a 413
        return (await self.ctx.batches.cancel(self.owner(request), batch_id)).card()


def add_batch_routes(app: FastAPI, endpoints, check_key) -> None:
    """The Files and Batch routes; the batches run their lines through `app`."""
    batch = BatchEndpoints(endpoints)
    endpoints.ctx.batches.app = app
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])
    v1.add_api_route("/files", batch.upload, methods=["POST"])
    v1.add_api_route("/files", batch.list_files, methods=["GET"])
    v1.add_api_route("/files/{file_id}", batch.file, methods=["GET"])
    v1.add_api_route("/files/{file_id}/content", batch.content, methods=["GET"])
    v1.add_api_route("/files/{file_id}", batch.delete_file, methods=["DELETE"])
    v1.add_api_route("/batches", batch.create, methods=["POST"])
    v1.add_api_route("/batches", batch.list_batches, methods=["GET"])
    v1.add_api_route("/batches/{batch_id}", batch.batch, methods=["GET"])
    v1.add_api_route("/batches/{batch_id}/cancel", batch.cancel, methods=["POST"])
    app.include_router(v1)
