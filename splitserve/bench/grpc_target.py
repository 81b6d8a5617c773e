"""`grpc://HOST:PORT`: the cluster's router, through its gRPC `Generate` stream.

Each `GenerateChunk` that carries token ids is one streamed chunk for the metrics (TTFT, ITL);
a chunk with text but no token ids (the detokenizer's flush before the final message) only
adds to the generated text. `GenerateFinal.usage.completion_tokens` is the output count. A
final message with finish reason "abort", a gRPC status other than OK, or a stream that ends
without a final message is a failure. With the endpoint `/v1/embeddings` each prompt goes to
`Router.Embed` instead, one input a call, and the reply is the one chunk. The API key is the `Authorization: Bearer KEY` header
(`--header Authorization="Bearer KEY"`, any case), sent as gRPC `authorization` metadata.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from splitserve.bench.metrics import RequestRecord
from splitserve.bench.targets import Target, TargetOptions, is_embeddings, register_target
from splitserve.bench.workloads import BenchRequest
from splitserve.client import AsyncClient, Final


def api_key_from_headers(headers: dict) -> str | None:
    """The key of an `Authorization: Bearer KEY` header (header name and scheme in any case)."""
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme, _, key = str(value).strip().partition(" ")
            return (key.strip() if scheme.lower() == "bearer" else str(value).strip()) or None
    return None


class GrpcTarget(Target):
    def __init__(self, url: str, options: TargetOptions):
        self.url, self.options = url, options
        self.client: AsyncClient | None = None
        self.api_key = api_key_from_headers(options.headers)
        self.embeddings = is_embeddings(options.endpoint)

    async def start(self) -> None:
        self.client = AsyncClient(self.url, api_key=self.api_key, timeout_s=self.options.request_timeout_s)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        try:
            await (self._embed(request, record) if self.embeddings else self._generate(request, record))
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            record.fail(f"{exc.code().name}: {exc.details()}")
        except Exception as exc:  # the contract: record the failure, never raise
            record.fail(f"{type(exc).__name__}: {exc}")

    async def _generate(self, request: BenchRequest, record: RequestRecord) -> None:
        stream = self.client.generate(
            prompt=request.prompt, documents=list(request.documents or ()), max_tokens=request.output_tokens,
            ignore_eos=self.options.ignore_eos, temperature=self.options.temperature,
            lora=self.options.adapter_for(request))
        record.mark_sent()
        async with contextlib.aclosing(stream):
            await self._read(stream, record)

    async def _embed(self, request: BenchRequest, record: RequestRecord) -> None:
        record.mark_sent()
        vectors = await self.client.embed([request.prompt])
        if len(vectors) == 1 and vectors[0]:
            record.finish_pooled()
        else:
            record.fail(f"expected one embedding, got {len(vectors)}")

    @staticmethod
    async def _read(stream, record: RequestRecord) -> None:
        async for event in stream:
            if isinstance(event, Final):
                if event.finish_reason == "abort":
                    record.fail("the server aborted the request (finish_reason abort)")
                else:
                    record.finish(event.completion_tokens)
                return
            if event.token_ids:
                record.token_ids += event.token_ids
                record.mark_token(event.text)
            else:
                record.generated_text += event.text
        record.fail("stream ended without a final message")

    def describe(self) -> dict:
        return {"url": self.url, "protocol": "grpc", "api": "embed" if self.embeddings else "generate",
                "ignore_eos": self.options.ignore_eos,
                "temperature": self.options.temperature, "api_key": self.api_key is not None,
                **self.options.lora_info()}


register_target("grpc", GrpcTarget)
