"""The router's OpenAI-compatible HTTP API: a FastAPI app over the same Frontend, Orchestrator
and Admission as the gRPC servicer (one process, one event loop).

A request's life: API key (401) -> body read within the size limit (413) and validated (400)
-> model name checked (404) -> prompt ids and Job from the Frontend (400) -> a slot from
Admission (429 + Retry-After) -> a route (503: no healthy nodes) -> `completion()` bounded by
the request's deadline -> one JSON response, or server-sent events. The client going away
cancels the request on the nodes. `/health` (and `/ping`), `/version` and `/metrics` need no key (probes,
scrapers).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable

import grpc

import splitserve

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.front.admission import Admission, DeadlineExceeded, Overloaded, bounded, within
from router.front.auth import ApiKeys
from router.front.completion import completion
from router.front.intake import Frontend
from router.front.http_docs import add_docs_routes
from router.front.invocations import add_invocations_route
from router.front.lora_api import add_lora_routes
from router.front.http_tokenize import add_tokenizer_routes
from router.front.asgi_call import CALLER
from router.front.batch_api import add_batch_routes
from router.front.best_of import best_results
from router.front.beam_search import beam_results, beam_search, step_params, top_logprobs
from router.front.batch_files import FileStore
from router.front.batches import Batches
from router.front.pages import cursor_page
from router.front.http_errors import ApiError, ClientGone, from_exception, unauthorized
from router.front.http_metrics import CountRequests
from router.front.http_stream import (EventStreamResponse, collect, event_stream, numbered, response_stream,
                                     until_disconnect)
from router.front.openai_format import ChatShape, CompletionShape, Echo, TokenTexts, Shape, whole_response
from router.front.openai_models import ChatCompletionRequest, CompletionRequest
from router.front.anthropic_format import MessageWriter, error_body
from router.front.embeddings_api import EmbeddingRequest, embeddings_body
from router.front.rerank_api import RerankRequest, ScoreRequest, rerank_body, score_body
from router.front.anthropic_models import MessagesRequest
from router.front.responses_format import ResponseWriter, answer_messages, request_fields
from router.front.responses_models import ResponsesRequest
from router.front.responses_store import ResponseStore, StoredResponse
from router.redis_client import StoreUnavailable
from router.cluster.embedder import Embedder
from splitserve.engine.pooling import PoolingParams
from router.cluster.orchestrator import Job, NodeCallError, Orchestrator
from router.cluster.policies import NoRoute

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY_BYTES = 8 << 20
# HTTP status of a refusal by this front -> the gRPC code the metrics count it under
REFUSALS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
            404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.INVALID_ARGUMENT,
            504: grpc.StatusCode.DEADLINE_EXCEEDED}
# What the router raises on purpose; anything else is a bug: 500 and a traceback in the log.
HANDLED = (ApiError, ValueError, Overloaded, NoRoute, NodeCallError, DeadlineExceeded, ClientGone, StoreUnavailable)


@dataclass
class HttpContext:
    frontend: Frontend
    orchestrator: Orchestrator
    admission: Admission
    api_keys: ApiKeys
    model_name: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    count_error: Callable = lambda code: None  # (grpc.StatusCode) -> None: the metrics' errors by code
    responses: object = field(default_factory=ResponseStore)  # the Responses API's stored responses (responses_store)
    model_aliases: tuple[str, ...] = ()  # more names requests may use (--served-model-name a,b,...)
    count_http: Callable = lambda route, method, status: None  # the metrics' HTTP requests by route and status
    files: FileStore = field(default_factory=FileStore)  # the Files API's (batch inputs and outputs)
    batches: Batches | None = None  # the Batch API's; None: over `files`, at the default concurrency
    allow_runtime_lora: bool = False  # /v1/load_lora_adapter and /v1/unload_lora_adapter (lora_api.py)
    runtime_loras: object = None  # lora_admin.RuntimeAdapters over --lora-store; None: made at the first call

    def __post_init__(self):
        self.texts = TokenTexts(self.frontend.tokenizer)
        self.batches = self.batches or Batches(self.files)
        self.created = int(time.time())


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class Endpoints:
    def __init__(self, ctx: HttpContext):
        self.ctx = ctx
        self.embedder = Embedder(ctx.orchestrator)

    def caller(self, request: Request) -> str:
        """Who sent it (auth.ApiKeys.caller), for what it owns and its cache salt: a batch line's owner, else the
        key's digest ("" with auth off)."""
        in_process = request.scope.get(CALLER)
        return in_process if in_process is not None else self.ctx.api_keys.caller(request.headers)

    def check_key(self, request: Request) -> None:
        if request.scope.get(CALLER) is not None:  # a batch line, run in-process (asgi_call.py)
            return
        if not self.ctx.api_keys.allows_headers(request.headers):
            raise unauthorized()

    async def body(self, request: Request, limit: int | None = None) -> bytes:
        """The body within `limit` bytes (default --max-request-bytes), else 413."""
        return await read_body(request, self.ctx.max_body_bytes if limit is None else limit)

    def check_model(self, model: str | None) -> None:
        self.served_name(model)

    def served_name(self, model: str | None) -> str:
        """The name a response carries: the one the request used (the model, an alias or a LoRA adapter's), else
        the model's; 404 for a name this server does not serve."""
        names = (self.ctx.model_name, *self.ctx.model_aliases)
        adapters = tuple(self.ctx.orchestrator.lora_adapters()) if model and model not in names else ()
        if model and model not in names + adapters:
            names += adapters
            raise ApiError(404, f"model {model!r} does not exist; this server serves {' or '.join(map(repr, names))}",
                           param="model", code="model_not_found")
        return model or self.ctx.model_name

    def lora_of(self, name: str) -> str | None:
        """The LoRA adapter a served name runs (None: the base model)."""
        return None if name in (self.ctx.model_name, *self.ctx.model_aliases) else name

    def base_name(self, model: str | None) -> str:
        """served_name for what only the base model serves (embeddings, scores): a LoRA adapter's name is a 400."""
        name = self.served_name(model)
        if self.lora_of(name) is not None:
            raise ApiError(400, f"{name!r} is a LoRA adapter; it serves generation only: embeddings and scores come "
                                f"from the base model {self.ctx.model_name!r}", param="model")
        return name

    async def models(self) -> dict:
        names = (self.ctx.model_name, *self.ctx.model_aliases, *self.ctx.orchestrator.lora_adapters())
        return {"object": "list", "data": [self.model_card(name) for name in names]}

    async def model(self, model: str) -> dict:
        """GET /v1/models/{model} (the openai client's models.retrieve)."""
        return self.model_card(self.served_name(model))

    def model_card(self, name: str) -> dict:
        """A LoRA adapter's card names the base model as its parent (vLLM's)."""
        card = {"id": name, "object": "model", "created": self.ctx.created, "owned_by": "splitserve",
                "max_model_len": self.ctx.frontend.limits.max_model_len}
        return card if self.lora_of(name) is None else {**card, "root": name, "parent": self.ctx.model_name}

    async def completions(self, request: Request):
        body = CompletionRequest.parse(await self.body(request))
        body.check_supported()
        name = self.served_name(body.model)
        request_id, n, prompt_jobs, jobs, shapes = _request_id(request, "cmpl"), body.num_choices, [], [], []
        inputs, params = body.prompt_inputs(), body.sampling_params(self.ctx.frontend.sampling_defaults)
        for k, prompt_input in enumerate(inputs):  # choice k * n + i: prompt k's choice i (OpenAI's order)
            prompt_ids, chunks = self.ctx.frontend.prompt_and_chunks(**prompt_input, documents=body.documents or (),
                                                                     truncate=body.truncate_prompt_tokens,
                                                                     add_special_tokens=body.add_special_tokens)
            job = self.ctx.frontend.job(prompt_ids, replace(params, lora=self.lora_of(name)), request_id, chunks,
                                        self.caller(request))
            prompt_jobs.append(job if len(inputs) == 1 else replace(job, request_id=f"{request_id}-p{k}"))
            jobs += choice_jobs(prompt_jobs[-1], n)
            echo = self._echo(prompt_input, prompt_ids, body) if body.echo else None
            shapes += [CompletionShape(request_id, name, self.ctx.texts, len(prompt_ids),
                                       body.logprobs is not None, index=k * n + i, counts_prompt=i == 0, echo=echo,
                                       **_token_id_options(body, prompt_ids)) for i in range(n)]
        if body.use_beam_search:
            return await self.serve_beams(request, prompt_jobs, shapes, body)
        if body.samples_more:
            return await self.serve_best_of(request, prompt_jobs, shapes, body.best_of)
        return await self.serve(request, jobs, shapes, body.stream, body.include_usage, body.continuous_usage)

    def _echo(self, prompt_input: dict, prompt_ids: list[int], body: CompletionRequest) -> Echo:
        """A text prompt is echoed as sent; token ids, or a prompt with documents in front or truncated, as the model
        saw it."""
        text = prompt_input.get("prompt")
        if text is None or body.documents or body.truncate_prompt_tokens is not None:
            text = self.ctx.frontend.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        return Echo(text, prompt_ids, body.scores_only)

    async def chat(self, request: Request):
        body = ChatCompletionRequest.parse(await self.body(request))
        body.check_supported()
        name = self.served_name(body.model)
        job = self.chat_job(body, _request_id(request, "chatcmpl"), self.caller(request), self.lora_of(name))
        shapes = [ChatShape(job.request_id, name, self.ctx.texts, len(job.prompt_token_ids),
                            body.logprobs, index=i, counts_prompt=i == 0, tool_mode=body.tool_mode,
                            **_token_id_options(body, job.prompt_token_ids)) for i in range(body.num_choices)]
        if body.use_beam_search:
            return await self.serve_beams(request, [job], shapes, body)
        return await self.serve(request, choice_jobs(job, len(shapes)), shapes, body.stream, body.include_usage,
                                body.continuous_usage)

    def chat_job(self, body: ChatCompletionRequest, request_id: str, caller: str, lora: str | None = None) -> Job:
        frontend = self.ctx.frontend
        prompt_ids, chunks = self.chat_prompt(body)
        room = max(1, frontend.limits.max_model_len - len(prompt_ids))
        params = replace(body.sampling_params(room, frontend.sampling_defaults), lora=lora)
        return frontend.job(prompt_ids, params, request_id, chunks, caller)

    def chat_prompt(self, body: ChatCompletionRequest) -> tuple[list[int], tuple]:
        return self.ctx.frontend.prompt_and_chunks(messages=body.chat_messages(), documents=body.documents or (),
                                                   chat_format=body.chat_format(), truncate=body.truncate_prompt_tokens,
                                                   add_special_tokens=body.add_special_tokens)

    async def messages(self, request: Request):
        """POST /v1/messages: Anthropic's Messages API, a chat completion of one choice in its words
        (anthropic_*.py)."""
        body = MessagesRequest.parse(await self.body(request))
        body.check_supported()
        name = self.served_name(body.model)
        chat = body.chat_request()
        job = self.chat_job(chat, _request_id(request, "msg"), self.caller(request), self.lora_of(name))
        writer = MessageWriter(ChatShape(job.request_id, name, self.ctx.texts,
                                         len(job.prompt_token_ids), False, tool_mode=chat.tool_mode))
        return await self.serve_one(request, job, writer, body.stream)

    async def count_message_tokens(self, request: Request) -> dict:
        """POST /v1/messages/count_tokens: the prompt's tokens, as the model sees them."""
        body = MessagesRequest.parse(await self.body(request))
        body.check_supported(counting=True)
        self.check_model(body.model)
        return {"input_tokens": len(self.chat_prompt(body.chat_request())[0])}

    async def responses(self, request: Request):
        """POST /v1/responses: a chat completion of one choice in the Responses API's words (responses_*.py)."""
        body = ResponsesRequest.parse(await self.body(request))
        body.check_supported()
        name = self.served_name(body.model)
        conversation = await self._history(body.previous_response_id) + body.input_messages()
        chat = body.chat_request(conversation)
        job = self.chat_job(chat, _request_id(request, "resp"), self.caller(request), self.lora_of(name))
        shape = ChatShape(job.request_id, name, self.ctx.texts, len(job.prompt_token_ids),
                          chat.logprobs, tool_mode=chat.tool_mode)
        writer = ResponseWriter(shape, request_fields(body, name, self.ctx.frontend.sampling_defaults))
        items = body.input_items()

        async def keep(response: dict) -> None:
            if not body.store:
                return
            try:
                answered = conversation + answer_messages(response["output"])
                await self.ctx.responses.put(StoredResponse(response, answered, items))
            except StoreUnavailable as exc:  # the answer stands; only its continuation is lost
                log.warning("response %s not stored: %s", response["id"], exc)

        return await self.serve_one(request, job, writer, body.stream, keep)

    async def embeddings(self, request: Request) -> JSONResponse:
        """POST /v1/embeddings (embeddings_api.py): one vector per input, from prefill or mixed nodes."""
        body = EmbeddingRequest.parse(await self.body(request))
        frontend = self.ctx.frontend
        body.check_supported(frontend.limits.hidden_size)
        name = self.base_name(body.model)
        prompts = [frontend.embedding_input(**item, truncate=body.truncate_prompt_tokens,
                                            add_special_tokens=body.add_special_tokens) for item in body.inputs()]
        request_id = _request_id(request, "embd")
        vectors = await self.embed(request, request_id, prompts, body.pooling_params(frontend.embedding_pooling))
        return JSONResponse(embeddings_body(vectors, body.encoding_format, name, sum(map(len, prompts))),
                            headers={"X-Request-Id": request_id})

    async def embed(self, request: Request, request_id: str, prompts: list[list[int]],
                    params: PoolingParams) -> list[list[float]]:
        """The prompts' embeddings (router/cluster/embedder.py) under one admission slot and the deadline."""
        params = replace(params, cache_salt=self.ctx.frontend.salt_for(self.caller(request), params.cache_salt))
        slot = self.ctx.admission.admit()
        try:
            work = self.embedder.embed(request_id, prompts, params)
            return await until_disconnect(request.receive, within(work, self.ctx.admission.deadline()))
        finally:
            slot.release()

    async def score(self, request: Request) -> JSONResponse:
        """POST /v1/score (vLLM's; rerank_api.py): pairs of texts scored by their embeddings' cosine similarity."""
        body = ScoreRequest.parse(await self.body(request))
        name = self.base_name(body.model)
        texts, pairs = body.pairs()
        prompts = [self.ctx.frontend.embedding_input(text, truncate=body.truncate_prompt_tokens) for text in texts]
        params = body.pooling_params(self.ctx.frontend.embedding_pooling)
        vectors = await self.embed(request, _request_id(request, "score"), prompts, params)
        tokens = sum(len(prompts[a]) + len(prompts[b]) for a, b in pairs)
        return JSONResponse(score_body(name, vectors, pairs, tokens))

    async def rerank(self, request: Request) -> JSONResponse:
        """POST /v1/rerank, /rerank, /v2/rerank (Jina's and Cohere's, as vLLM serves them; rerank_api.py)."""
        body = RerankRequest.parse(await self.body(request))
        name = self.base_name(body.model)
        texts, frontend = body.texts(), self.ctx.frontend
        prompts = [frontend.embedding_input(text, truncate=body.truncate_prompt_tokens,
                                            head=body.max_tokens_per_doc if i else None)
                   for i, text in enumerate(texts)]
        params = body.pooling_params(frontend.embedding_pooling)
        vectors = await self.embed(request, _request_id(request, "rerank"), prompts, params)
        return JSONResponse(rerank_body(name, body, texts, vectors, sum(map(len, prompts))))

    async def serve_one(self, request: Request, job: Job, writer, stream: bool, on_done=None):
        """One choice written by `writer` (the Responses and Messages APIs): its events, or the whole answer;
        `on_done` (async) gets the finished answer either way."""
        slots, events = self.start([job])
        headers = {"X-Request-Id": job.request_id}
        if stream:
            return EventStreamResponse(response_stream(events, writer, slots, on_done), headers=headers)
        [(pieces, finish)] = await self.results(request, events, slots, 1)
        answer = writer.whole(pieces, finish)
        if on_done is not None:
            await on_done(answer)
        return JSONResponse(answer, headers=headers)

    async def _history(self, previous_response_id: str | None) -> list[dict]:
        if previous_response_id is None:
            return []
        return (await self.stored(previous_response_id, "previous_response_id")).conversation

    async def stored(self, response_id: str, param: str | None = None) -> StoredResponse:
        entry = await self.ctx.responses.get(response_id)
        if entry is None:
            raise ApiError(404, f"no stored response with id {response_id!r} (responses are kept in the router's "
                           "memory: see README)", param=param, code="response_not_found")
        return entry

    async def get_response(self, response_id: str) -> dict:
        return (await self.stored(response_id)).response

    async def response_input_items(self, response_id: str, limit: int = 20, order: str = "desc",
                                   after: str | None = None) -> dict:
        """GET /v1/responses/{id}/input_items: the stored request's input items, a page at a time (OpenAI's
        cursor: the items after the one with id `after`, in `order`)."""
        if not 1 <= limit <= 100 or order not in ("asc", "desc"):
            raise ApiError(400, "limit must be in [1, 100] and order asc or desc", param="limit")
        items = list((await self.stored(response_id)).input_items)
        return cursor_page(items if order == "asc" else items[::-1], limit, after, "input item")

    async def delete_response(self, response_id: str) -> dict:
        await self.stored(response_id)
        await self.ctx.responses.delete(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def serve(self, request: Request, jobs: list[Job], shapes: list[Shape], stream: bool, include_usage: bool,
                    continuous_usage: bool = False):
        slots, events = self.start(jobs)
        headers = {"X-Request-Id": shapes[0].id}
        if stream:
            return EventStreamResponse(event_stream(events, shapes, include_usage, slots, continuous_usage),
                                       headers=headers)
        results = await self.results(request, events, slots, len(jobs))
        return JSONResponse(whole_response(shapes, results), headers=headers)

    async def serve_best_of(self, request: Request, jobs: list[Job], shapes: list[Shape], best_of: int) -> JSONResponse:
        """best_of > n (best_of.py): best_of samples of each job, its n best as its choices, answered whole."""
        samples = [sample for job in jobs for sample in choice_jobs(job, best_of)]
        slots, events = self.start(samples)
        results = await self.results(request, events, slots, len(samples))
        response = whole_response(shapes, best_results(results, best_of, len(shapes) // len(jobs)))
        usage = response["usage"]
        usage["completion_tokens"] = sum(finish.num_completion_tokens for _, finish in results)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return JSONResponse(response, headers={"X-Request-Id": shapes[0].id})

    async def serve_beams(self, request: Request, jobs: list[Job], shapes: list[Shape], body) -> JSONResponse:
        """use_beam_search (beam_search.py): each job's n best beams as its n choices, answered whole. The search
        is admitted once, a slot per beam, and its steps run under one deadline: it is refused before any step or
        not at all, and takes no longer than any other request."""
        start, eos = time.monotonic(), self.ctx.frontend.tokenizer.eos_token_ids
        slots, deadline = self.admit(len(jobs) * body.num_choices), self.ctx.admission.deadline()
        searches = [asyncio.ensure_future(beam_search(
            self._beam_step(request, job, body.num_choices, deadline), job.prompt_token_ids, body.num_choices,
            job.params.max_tokens, eos, body.ignore_eos, body.length_penalty)) for job in jobs]
        try:
            beams = [beam for found in await asyncio.gather(*searches) for beam in found]
        finally:  # one search failed (or the client left): the others stop too
            for search in searches:
                search.cancel()
            for slot in slots:
                slot.release()
        results = beam_results(beams, self.ctx.frontend.tokenizer, time.monotonic() - start)
        return JSONResponse(whole_response(shapes, results), headers={"X-Request-Id": shapes[0].id})

    def _beam_step(self, request: Request, job: Job, width: int, deadline: float | None):
        """A beam search's step: one one-token request per beam, routed as a request (the search holds the slots)."""
        steps, params = itertools.count(), step_params(job.params, width)

        async def step(prompts: list[list[int]]) -> list[list[tuple[int, float]]]:
            t = next(steps)
            events = self.launch([Job(f"{job.request_id}-s{t}-b{i}", prompt, params)
                                  for i, prompt in enumerate(prompts)], deadline)
            return [top_logprobs(pieces) for pieces, _ in await self.results(request, events, [], len(prompts))]
        return step

    def start(self, jobs: list[Job]) -> tuple[list, AsyncIterator]:
        """One job per choice, each admitted and routed on its own; their slots, and their events merged
        (`numbered`). The caller releases the slots."""
        slots = self.admit(len(jobs))
        try:
            return slots, self.launch(jobs, self.ctx.admission.deadline())
        except BaseException:
            for slot in slots:
                slot.release()
            raise

    def admit(self, n: int) -> list:
        """n admission slots, or Overloaded taking none."""
        slots = []
        try:
            for _ in range(n):
                slots.append(self.ctx.admission.admit())
        except BaseException:
            for slot in slots:
                slot.release()
            raise
        return slots

    def launch(self, jobs: list[Job], deadline: float | None) -> AsyncIterator:
        """Each job routed, its events bounded by `deadline`, all merged (`numbered`)."""
        streams = [bounded(completion(self.ctx.frontend.tokenizer, self.ctx.orchestrator, job,
                                      self.ctx.orchestrator.route(job)), deadline) for job in jobs]
        return numbered(streams)

    async def results(self, request: Request, events: AsyncIterator, slots: list, n: int) -> list:
        """Each choice's pieces and finish, once all are in (the client going away cancels them)."""
        try:
            return await until_disconnect(request.receive, collect(events, n))
        finally:
            for slot in slots:
                slot.release()

    async def version(self) -> dict:
        return {"version": splitserve.__version__}

    async def health(self) -> dict:
        nodes = self.ctx.orchestrator.registry.snapshot()
        return {"status": "ok", "nodes": len(nodes), "healthy_nodes": sum(n.healthy for n in nodes),
                "requests_in_flight": self.ctx.admission.num_active}


def _token_id_options(body, prompt_ids: list[int]) -> dict:
    """Shape keywords for vLLM's return_token_ids, return_tokens_as_token_ids and prompt_logprobs."""
    return {"prompt_token_ids": list(prompt_ids) if body.return_token_ids else None,
            "ids_as_tokens": body.return_tokens_as_token_ids,
            "scored_prompt": list(prompt_ids) if body.prompt_logprobs is not None else None}


def choice_jobs(job: Job, n: int) -> list[Job]:
    """n jobs for n choices: ids `<id>-<i>`; a seeded request's choice i draws from seed + i."""
    if n == 1:
        return [job]
    seed = job.params.seed
    return [replace(job, request_id=f"{job.request_id}-{i}",
                    params=replace(job.params, seed=None if seed is None else (seed + i) % 2**63)) for i in range(n)]


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    """OpenAI's error shape, or Anthropic's on its Messages API."""
    if request.url.path.startswith("/v1/messages"):
        return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)
    return error.response()


def _request_id(request: Request, prefix: str) -> str:
    given = request.headers.get("x-request-id", "")
    if given and (len(given) > 128 or not given.isprintable()):
        raise ApiError(400, "X-Request-Id must be at most 128 printable characters", param="X-Request-Id")
    return given or f"{prefix}-{uuid.uuid4().hex}"


def _metrics_route(app: FastAPI) -> None:
    """GET /metrics from router/metrics.py (Prometheus; the metrics issue's module).

    METRICS HOOK: router/metrics.py may expose `render() -> (bytes, content_type)`; without it,
    the prometheus_client default registry is served when prometheus_client is installed."""
    try:
        from router import metrics
        render = metrics.render
    except (ImportError, AttributeError):
        render = None
    if render is None:
        try:
            import prometheus_client
        except ImportError:
            return

        def render():
            return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        content, content_type = render()
        return Response(content, media_type=content_type)


def create_app(ctx: HttpContext) -> FastAPI:
    app = FastAPI(title="splitserve router", summary="OpenAI-compatible API of a disaggregated LLM cluster",
                  docs_url=None, redoc_url=None, openapi_url=None)  # served by http_docs.py, behind the key
    endpoints = Endpoints(ctx)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(endpoints.check_key)])
    v1.add_api_route("/models", endpoints.models, methods=["GET"])
    v1.add_api_route("/models/{model:path}", endpoints.model, methods=["GET"])
    v1.add_api_route("/completions", endpoints.completions, methods=["POST"])
    v1.add_api_route("/chat/completions", endpoints.chat, methods=["POST"])
    v1.add_api_route("/responses", endpoints.responses, methods=["POST"])
    v1.add_api_route("/messages", endpoints.messages, methods=["POST"])
    v1.add_api_route("/messages/count_tokens", endpoints.count_message_tokens, methods=["POST"])
    v1.add_api_route("/embeddings", endpoints.embeddings, methods=["POST"])
    v1.add_api_route("/score", endpoints.score, methods=["POST"])
    v1.add_api_route("/rerank", endpoints.rerank, methods=["POST"])
    v1.add_api_route("/responses/{response_id}", endpoints.get_response, methods=["GET"])
    v1.add_api_route("/responses/{response_id}/input_items", endpoints.response_input_items, methods=["GET"])
    v1.add_api_route("/responses/{response_id}", endpoints.delete_response, methods=["DELETE"])
    app.include_router(v1)
    keyed = [Depends(endpoints.check_key)]
    app.add_api_route("/rerank", endpoints.rerank, methods=["POST"], dependencies=keyed)  # Jina's path
    app.add_api_route("/v2/rerank", endpoints.rerank, methods=["POST"], dependencies=keyed)  # Cohere's
    app.add_api_route("/health", endpoints.health, methods=["GET"])
    app.add_api_route("/ping", endpoints.health, methods=["GET"])  # SageMaker's probe, as vLLM serves it
    app.add_api_route("/version", endpoints.version, methods=["GET"])
    add_docs_routes(app, endpoints.check_key)
    add_tokenizer_routes(app, endpoints, endpoints.check_key)
    add_batch_routes(app, endpoints, endpoints.check_key)
    add_lora_routes(app, endpoints, endpoints.check_key, ctx.allow_runtime_lora)
    add_invocations_route(app, endpoints, endpoints.check_key)
    _metrics_route(app)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        error = from_exception(exc)
        # node errors and 429s are counted where they arise
        if error.status in REFUSALS and not isinstance(exc, NodeCallError):
            ctx.count_error(REFUSALS[error.status])
        if error.status >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, exc)
        return _error_response(request, error)

    for exc_type in HANDLED:
        app.add_exception_handler(exc_type, on_error)
    app.add_middleware(CountRequests, count=ctx.count_http)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(request, ApiError(exc.status_code, str(exc.detail), "invalid_request_error"
                                                 if exc.status_code < 500 else "internal_error", headers=exc.headers))

    return app
