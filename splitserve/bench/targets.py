"""Where requests go: a `Target` per URL scheme.

`http://HOST:PORT` (and https) is any OpenAI-compatible server, streamed over SSE. Other
schemes plug in with `register_target(scheme, factory)`, a factory `(url, TargetOptions) ->
Target`. The cluster's `grpc://` target goes in `splitserve/bench/grpc_target.py` (see
TARGET_MODULES), which `make_target` imports on first use and which ends with
`register_target("grpc", GrpcTarget)`; it implements the `Target` contract below.
"""

from __future__ import annotations

import importlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from splitserve.bench.metrics import RequestRecord
from splitserve.bench.workloads import BenchRequest


@dataclass(frozen=True)
class TargetOptions:
    """Request settings shared by all targets (a target ignores those it has no use for)."""

    model: str | None = None  # None: the server's first model (/v1/models), else left out
    endpoint: str = "/v1/completions"  # or /v1/chat/completions, /v1/responses, /v1/messages (HTTP only), /v1/embeddings
    ignore_eos: bool = True  # force the requested output length where the server supports it
    temperature: float = 0.0
    request_timeout_s: float = 600.0
    max_connections: int = 0  # 0: unlimited
    headers: dict = field(default_factory=dict)
    extra_body: dict = field(default_factory=dict)
    lora_modules: tuple[str, ...] = ()  # vLLM bench's: each request names one of these LoRA adapters as its model

    def __post_init__(self):
        if not self.endpoint.startswith("/"):
            raise ValueError(f"endpoint must start with '/', got {self.endpoint!r}")
        if self.request_timeout_s <= 0 or self.max_connections < 0:
            raise ValueError("request_timeout_s must be > 0 and max_connections >= 0")

    def lora_info(self) -> dict:
        """What describe() stores of lora_modules (nothing without them)."""
        return {"lora_modules": list(self.lora_modules)} if self.lora_modules else {}

    def adapter_for(self, request: BenchRequest) -> str | None:
        """The LoRA adapter this request names: one of lora_modules, picked at random by its id (the same pick
        in every run), or None without them."""
        return random.Random(request.request_id).choice(self.lora_modules) if self.lora_modules else None


class Target(ABC):
    """One serving endpoint under test. The runner uses it as an async context manager
    (`start()` once before the first send, `close()` once at the end) and calls `send` from
    many tasks at once.

    `send(request, record)` contract:
    - call `record.mark_sent()` immediately before the request leaves (TTFT starts there);
    - call `record.mark_token(text)` on arrival of each streamed chunk or message that carries
      output (one call per chunk; a chunk may hold several tokens, as in vLLM's ITL);
    - end with exactly one of `record.finish(output_tokens)` (the server's count, or None if
      it gave none) or `record.fail(error)`; `finish` with no token marked becomes a failure;
    - never raise, except `asyncio.CancelledError` when the runner cancels it at its time
      limit (the runner then records the failure);
    - send `request.output_tokens` as the maximum (and, with `ignore_eos`, the forced) output
      length, and `request.documents`, when not None, as the request's RAG documents.
    """

    async def start(self) -> None:
        """Open connections, resolve the model name. Raises if the target is unusable."""

    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def send(self, request: BenchRequest, record: RequestRecord) -> None: ...

    def describe(self) -> dict:
        """Settings to store with the results (JSON-serializable)."""
        return {}

    async def __aenter__(self) -> "Target":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


TargetFactory = Callable[[str, TargetOptions], Target]
_TARGETS: dict[str, TargetFactory] = {}
# Schemes whose target module is imported on first use; importing it calls register_target.
TARGET_MODULES = {"grpc": "splitserve.bench.grpc_target"}


def register_target(scheme: str, factory: TargetFactory) -> None:
    """Make `scheme://...` URLs build targets with `factory(url, options)`."""
    _TARGETS[scheme.lower()] = factory


def target_schemes() -> tuple[str, ...]:
    return tuple(sorted(_TARGETS))


def make_target(url: str, options: TargetOptions | None = None) -> Target:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _TARGETS and scheme in TARGET_MODULES:
        try:
            importlib.import_module(TARGET_MODULES[scheme])
        except ModuleNotFoundError as e:
            if e.name != TARGET_MODULES[scheme]:
                raise
    if scheme not in _TARGETS:
        raise KeyError(f"no target for URL scheme {scheme!r} ({url}); registered: {', '.join(target_schemes())}")
    return _TARGETS[scheme](url, options or TargetOptions())


EMBEDDINGS = "/v1/embeddings"
APIS = ("chat/completions", "responses", "messages", "embeddings")


def is_embeddings(path: str) -> bool:
    """True for an endpoint (or URL) that ends in /v1/embeddings."""
    return path.rstrip("/").endswith(EMBEDDINGS)


class OpenAIHTTPTarget(Target):
    """Streams `/v1/completions` (or `/v1/chat/completions`) with `stream_options.include_usage`; also
    OpenAI's Responses API (`/v1/responses`) and Anthropic's Messages API (`/v1/messages`); posts
    each prompt to `/v1/embeddings` as one input (not streamed: the answer is the one chunk).

    Timing follows vLLM's `async_request_openai_completions`: every SSE `data:` event with a
    non-empty `choices` list is one chunk (its text may be empty); the `usage` event gives
    `completion_tokens`. On the Responses API each `response.output_text.delta` is a chunk and the
    final response's `usage.output_tokens` the count; on the Messages API each `content_block_delta`
    and `message_delta`'s `usage.output_tokens`. A non-200 status, an `error` event, an exception or
    a stream with no chunk is a failure. `ignore_eos` sends vLLM's `ignore_eos: true` and `min_tokens`.

    Servers close keep-alive connections after some requests or some idle time, not always
    announced; a request sent on a pooled connection the server is closing meets a closed or
    reset connection before any byte of its response. Such a request is resent once on a
    fresh connection and counted in `record.retries`, not as a failure; a connection lost
    after response bytes arrived is a failure.
    """

    def __init__(self, url: str, options: TargetOptions):
        parts = urlsplit(url)
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        path = parts.path.rstrip("/")
        self.url = self.base_url + (path if path else options.endpoint)
        self.api = next((api for api in APIS if self.url.rstrip("/").endswith("/v1/" + api)), "completions")
        self.chat = self.api == "chat/completions"
        self.options, self.model = options, options.model
        self._session = self._fresh_session = None

    async def start(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.options.max_connections, limit_per_host=self.options.max_connections)
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.options.headers)
        # retries: a new connection each, closed after its response
        self._fresh_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                                    timeout=timeout, headers=self.options.headers)
        if self.model is None:
            self.model = await self._first_model()

    async def close(self) -> None:
        for session in (self._session, self._fresh_session):
            if session is not None:
                await session.close()
        self._session = self._fresh_session = None

    def describe(self) -> dict:
        return {"url": self.url, "model": self.model, "chat": self.chat, "api": self.api,
                "ignore_eos": self.options.ignore_eos, **self.options.lora_info()}

    async def _first_model(self) -> str | None:
        try:
            async with self._session.get(self.base_url + "/v1/models") as response:
                data = await response.json(content_type=None)
                return data["data"][0]["id"]
        except Exception:  # a server without /v1/models: send no model name
            return None

    def body(self, request: BenchRequest) -> dict:
        if self.api == "embeddings":
            return self._embeddings_body(request)
        body = {"stream": True, "temperature": self.options.temperature}
        if self.api in ("completions", "chat/completions"):
            body["stream_options"] = {"include_usage": True}
        messages = [{"role": "user", "content": request.prompt}]
        if self.api == "chat/completions":
            body.update(messages=messages, max_completion_tokens=request.output_tokens)
        elif self.api == "responses":
            body.update(input=request.prompt, max_output_tokens=request.output_tokens)
        elif self.api == "messages":
            body.update(messages=messages, max_tokens=request.output_tokens)
        else:
            body.update(prompt=request.prompt, max_tokens=request.output_tokens)
        model = self.options.adapter_for(request) or self.model
        if model is not None:
            body["model"] = model
        if self.options.ignore_eos:
            body["ignore_eos"], body["min_tokens"] = True, request.output_tokens
        if request.documents is not None:
            body["documents"] = list(request.documents)
        return body | self.options.extra_body

    def _embeddings_body(self, request: BenchRequest) -> dict:
        body = {"input": request.prompt} | ({"model": self.model} if self.model is not None else {})
        return body | self.options.extra_body

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        body = self.body(request)
        try:
            if not await self._send_once(self._session, body, record):
                record.retries += 1
                if not await self._send_once(self._fresh_session, body, record):
                    record.fail("the server closed a fresh connection before answering (after one retry)")
        except Exception as e:  # CancelledError is not an Exception: it propagates
            record.fail(f"{type(e).__name__}: {e}")

    async def _send_once(self, session, body: dict, record: RequestRecord) -> bool:
        """One POST; False, recording nothing else, if the connection closed before any response byte."""
        record.mark_sent()
        try:
            response = await session.post(self.url, json=body)
        except Exception as e:
            if closed_before_response(e):
                return False
            raise
        async with response:
            if response.status != 200:
                text = (await response.text())[:300]
                record.fail(f"HTTP {response.status}: {response.reason}: {text}")
                return True
            if self.api == "embeddings":
                check_embeddings(await response.json(content_type=None))
                record.finish_pooled()
                return True
            usage = await self._read_stream(response, record)
        record.finish(usage)
        return True

    async def _read_stream(self, response, record: RequestRecord) -> int | None:
        buffer, usage = b"", None
        async for data in response.content.iter_any():
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                usage = self._handle_line(line.strip(), record, usage)
        return self._handle_line(buffer.strip(), record, usage)

    def _handle_line(self, line: bytes, record: RequestRecord, usage: int | None) -> int | None:
        if not line.startswith(b"data:"):
            return usage  # blank lines, comments (":ping"), event names
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return usage
        event = json.loads(payload)
        if event.get("error") or event.get("type") in ("error", "response.failed"):
            raise RuntimeError(f"server error in stream: {event.get('error') or event}")
        if self.api in ("responses", "messages"):
            return self._handle_event(event, record, usage)
        if choices := event.get("choices"):
            record.mark_token(self._chunk_text(choices[0]))
        if event.get("usage"):
            usage = event["usage"].get("completion_tokens", usage)
        return usage

    def _handle_event(self, event: dict, record: RequestRecord, usage: int | None) -> int | None:
        """A Responses or Messages API event: text deltas are chunks; the end says how many tokens came."""
        kind = event.get("type")
        if kind == "response.output_text.delta":
            record.mark_token(event.get("delta") or "")
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            record.mark_token(delta.get("text") or delta.get("partial_json") or "")
        elif kind in ("response.completed", "response.incomplete"):
            usage = ((event.get("response") or {}).get("usage") or {}).get("output_tokens", usage)
        elif kind == "message_delta":
            usage = (event.get("usage") or {}).get("output_tokens", usage)
        return usage

    def _chunk_text(self, choice: dict) -> str:
        if self.chat:
            return (choice.get("delta") or {}).get("content") or ""
        return choice.get("text") or ""


def check_embeddings(answer) -> None:
    """Raise unless an embeddings answer carries a vector (a float list, or base64 text)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    vector = data[0].get("embedding") if data and isinstance(data[0], dict) else None
    if not vector or not isinstance(vector, (list, str)):
        raise RuntimeError(f"no embedding in the answer: {str(answer)[:200]}")


def closed_before_response(error: Exception) -> bool:
    """True for a connection the server closed or reset before any byte of the response.

    aiohttp raises ServerDisconnectedError whose message is the partly parsed response when
    some arrived (a plain string otherwise), an OS error for a reset, ClientConnectionResetError
    (a ConnectionResetError) when the request meets a transport already closing; a failure to
    connect is not such a close.
    """
    import aiohttp

    if isinstance(error, aiohttp.ServerDisconnectedError):
        return isinstance(error.message, str)
    if isinstance(error, aiohttp.ClientConnectorError):
        return False
    return isinstance(error, (aiohttp.ClientOSError, ConnectionResetError))


register_target("http", OpenAIHTTPTarget)
register_target("https", OpenAIHTTPTarget)
