"""`grpc://HOST:PORT`: the cluster's router, through its gRPC `Generate` stream."""

from __future__ import annotations

import asyncio

import grpc

from splitserve.bench.metrics import RequestRecord
from splitserve.bench.targets import Target, TargetOptions, register_target
from splitserve.bench.workloads import BenchRequest
from splitserve.client import AsyncClient, Final


class GrpcTarget(Target):
    def __init__(self, url: str, options: TargetOptions):
        self.url, self.options = url, options
        self.client: AsyncClient | None = None
        self.api_key = (options.headers.get("Authorization", "").removeprefix("Bearer ") or None)

    async def start(self) -> None:
        self.client = AsyncClient(self.url, api_key=self.api_key, timeout_s=self.options.request_timeout_s)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        record.mark_sent()
        try:
            async for event in self.client.generate(
                    prompt=request.prompt, documents=list(request.documents or ()), max_tokens=request.output_tokens,
                    ignore_eos=self.options.ignore_eos, temperature=self.options.temperature):
                if isinstance(event, Final):
                    record.finish(event.completion_tokens)
                    return
                if event.token_ids:
                    record.mark_token(event.text)
            record.fail("stream ended without a final message")
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            record.fail(f"{exc.code().name}: {exc.details()}")

    def describe(self) -> dict:
        return {"url": self.url, "protocol": "grpc"}


register_target("grpc", GrpcTarget)
