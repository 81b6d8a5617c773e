"""Shared pieces of the bench tests: tokenizer fixtures and a fake OpenAI streaming server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from splitserve.bench.prompts import load_tokenizer
from tests.support.server_thread import ServerThread


@pytest.fixture(scope="session")
def bench_model_dir(tiny_model) -> Path:
    """The shared tiny model's folder (its tokenizer.json is a BPE trained on MuSiQue)."""
    return Path(tiny_model)


@pytest.fixture(scope="session")
def bench_tokenizer(bench_model_dir):
    return load_tokenizer(bench_model_dir)


class FakeOpenAIServer(ServerThread):
    """OpenAI-style streaming server on 127.0.0.1 in a thread, for the logic tests.

    Streams one SSE chunk per output token (`max_tokens` or `max_completion_tokens` of them)
    every `token_delay_s`, then a usage chunk and [DONE]. Every `fail_every`-th POST gets an
    HTTP 500. `/slow/v1/completions` never answers (time-limit tests). `/v1/embeddings` answers
    a 4-float vector after `token_delay_s`, and `{"data": []}` for every `fail_every`-th POST.
    Bodies are kept.
    """

    def __init__(self, fail_every: int = 0, token_delay_s: float = 0.002):
        super().__init__()
        self.fail_every, self.token_delay_s = fail_every, token_delay_s
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/slow/v1/completions", self._slow)
        app.router.add_post("/v1/embeddings", self._embed)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"data": [{"id": "fake-model"}]})

    async def _slow(self, request):
        await asyncio.wait_for(self._stop.wait(), 60)

    async def _embed(self, request):
        from aiohttp import web

        self.bodies.append(await request.json())
        fail = self.fail_every and len(self.bodies) % self.fail_every == 0
        await asyncio.sleep(self.token_delay_s)
        if fail:
            return web.json_response({"object": "list", "data": []})
        return web.json_response({"object": "list", "data": [{"index": 0, "embedding": [0.5, -0.5, 0.5, -0.5]}]})

    async def _complete(self, request):
        from aiohttp import web

        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.fail_every and len(self.bodies) % self.fail_every == 0:
            return web.Response(status=500, text="injected failure")
        chat = "messages" in body
        n = body.get("max_completion_tokens") if chat else body.get("max_tokens")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for i in range(n):
                await asyncio.sleep(self.token_delay_s)
                choice = {"index": 0, "delta": {"content": f"t{i} "}} if chat else {"index": 0, "text": f"t{i} "}
                await response.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        finally:
            self.in_flight -= 1
        return response
