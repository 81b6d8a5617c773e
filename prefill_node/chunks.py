"""A node's chunk cache, on the asyncio side: planning, the mixed node's blended Generate, misses, ingest.

A request that carries chunk spans: `plan()` looks the chunks up (local tier, then Redis, in a
thread) -> with at least one hit, the prefill runs blended on the engine thread (prefill nodes:
prefill_node/blended.py; mixed nodes: `generate()`, which then admits the request for decoding
like a decode node admits transferred KV) -> chunks found nowhere are computed alone and stored
afterwards, off the request's critical path (`_store_later`, one task per chunk, deduplicated),
each after the request's head (the tokens before its first chunk: BOS or the chat template's
header, an attention sink in front of the chunk, as where a first document sits).
With no hit, the request takes the plain engine path.

With live variants on (ChunkCacheConfig.live_variants > 0, the default), the chunks the plan
names (`record`: misses, and hits reused in a context not stored yet) are also computed once
more inside the request's own prompt and stored as variants of that context (`_record_later`,
chunkcache/live.py), after the request's prefill (`prefilled(rid)`) so that they never run ahead
of it on the engine thread. Missed chunks are still stored as computed after the head too (the
first one's recording is exactly that already): a later request that puts one first reuses it
with no fix instead of fixing a variant computed after other chunks (Cache-Craft planning on
SmolLM2 / MuSiQue: the same answers at 0.28 of the prompt's rows computed instead of 0.43;
README). Recordings and stores run as the engine loop's background work, one layer at a time,
only while no request waits: a later request's prefill never queues behind them for more than
one layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

from splitserve.chunkcache.documents import chunk_token_ids, validate_spans
from splitserve.chunkcache.keys import model_fingerprint, prefix_hash
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.runner import ChunkCache, RequestPlan
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.engine import RequestOutput, SamplingParams
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import OutputStream, run_streaming
from node.config import ChunkPathConfig

log = logging.getLogger(__name__)
RECORD_WAIT_S = 60.0  # a recording waits at most this long for its request's prefill


def can_blend(params: SamplingParams) -> bool:
    """Whether a request's documents may come from the chunk cache: not when every prompt row is wanted (prompt
    logprobs), nor under a LoRA adapter (the cached chunks are the base model's KV): those prefill exactly."""
    return params.prompt_logprobs is None and params.lora is None


def build_chunk_path(config: ChunkPathConfig, model_dir: str, engine_loop: EngineLoop) -> "ChunkPath | None":
    """The chunk path of a prefill or mixed node, or None when its chunk cache is off."""
    if not config.enabled:
        return None
    engine = engine_loop.engine
    remote = None
    if config.redis_url:
        layout = (engine.model_config.num_layers, engine.model_config.num_kv_heads, engine.model_config.head_dim)
        remote = RedisTier(config.redis_url, model_fingerprint(model_dir), engine.config.kv_dtype, config.ttl_s,
                           config.int8, layout=layout)  # keys and values in the KV cache's dtype (--kv-cache-dtype)
    store = ChunkStore(LocalTier(config.local_bytes, config.cache.eviction), remote, config.cache.craft.max_variants,
                       engine.config.kv_torch_dtype)
    blend = config.cache.blend
    log.info("chunk cache: local tier %d bytes, redis %s, blend layers %s ratios %s, planning %s",
             config.local_bytes, config.redis_url or "off (local tier only)", blend.check_layers, blend.ratios,
             config.cache.planning)
    return ChunkPath(engine_loop, ChunkCache(engine, store, config.cache), config.stats_max_keys)


class ChunkPath:
    def __init__(self, engine_loop: EngineLoop, cache: ChunkCache, max_stats_keys: int = 1024):
        self.engine_loop, self.cache = engine_loop, cache
        self.max_stats_keys = max_stats_keys
        self._storing: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._prefilling: dict[str, asyncio.Event] = {}

    async def plan(self, prompt: list[int], spans: list[tuple[int, int]], rid: str | None = None,
                   salt: str | None = None) -> RequestPlan | None:
        """The reuse plan, or None when nothing hit (the plain path then runs). Schedules stores of misses
        and recordings of live variants (which wait for `prefilled(rid)` when rid is given), all under the
        request's cache salt."""
        validate_spans(spans, len(prompt))
        window = self.cache.engine.model_config.sliding_window
        if window is not None and len(prompt) > window:
            return None  # a blended prefill attends to every earlier key: no sliding window
        plan = await asyncio.to_thread(self.cache.plan, prompt, spans, salt)
        head = prompt[:spans[0][0]] if spans else []
        live = self.cache.config.live_variants > 0
        for i in plan.misses:
            s, n = spans[i]
            if i > 0 or not live:  # with live variants, the first chunk's recording is that variant already
                self._store_later(plan.keys[i], prompt[s:s + n], head)
        if live:
            self._record_later(prompt, spans, plan, rid)
        return plan if plan.placed else None

    def prefilled(self, rid: str) -> None:
        """The request's prompt is computed: recordings it scheduled may use the engine now."""
        event = self._prefilling.pop(rid, None)
        if event is not None:
            event.set()

    def _record_later(self, prompt: list[int], spans: list[tuple[int, int]], plan: RequestPlan,
                      rid: str | None) -> None:
        names = {i: f"{plan.keys[i]}:{spans[i][0]}:{prefix_hash(prompt[:spans[i][0]])}" for i in plan.record}
        targets = [i for i, name in names.items() if name not in self._storing]
        if not targets:
            return
        ids = {names[i] for i in targets}
        self._storing |= ids
        gate = self._prefilling.setdefault(rid, asyncio.Event()) if rid is not None else None
        task = asyncio.get_running_loop().create_task(self._record(prompt, spans, plan.keys, targets, ids, gate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, prompt: list[int], spans: list[tuple[int, int]], keys: list[str], targets: list[int],
                      ids: set[str], gate: asyncio.Event | None) -> None:
        try:
            if gate is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(gate.wait(), RECORD_WAIT_S)
                self._prefilling = {r: e for r, e in self._prefilling.items() if e is not gate}
            entries = await self._in_background(lambda engine: self.cache.record_steps(engine, prompt, spans, keys,
                                                                                       targets))
            await asyncio.to_thread(lambda: [self.cache.store.put(meta, kv) for meta, kv in entries])
        except Exception:  # a failed recording only costs a later fix
            log.exception("recording live chunk variants failed")
        finally:
            self._storing -= ids

    def _store_later(self, key: str, chunk_ids: list[int], head: list[int]) -> None:
        if key in self._storing:
            return
        self._storing.add(key)
        task = asyncio.get_running_loop().create_task(self._store(key, chunk_ids, head))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, key: str, chunk_ids: list[int], head: list[int]) -> None:
        try:
            [(meta, kv)] = await self._in_background(lambda engine: self.cache.compute_in_context_steps(
                engine, [chunk_ids], head, [key]))
            await asyncio.to_thread(self.cache.store.put, meta, kv)
        except Exception:  # a failed store only costs a later miss
            log.exception("storing chunk %s failed", key)
        finally:
            self._storing.discard(key)

    async def generate(self, rid: str, prompt: list[int], params: SamplingParams, prior: int,
                       spans: list[tuple[int, int]]):
        """Mixed node: yields RequestOutputs like run_streaming, the first token from the blended prefill."""
        try:
            plan = await self.plan(prompt, spans, rid, params.cache_salt)
            first = None
            if plan is not None:
                stream = OutputStream()
                self.engine_loop.subscribe(rid, stream.sink)
                first = await self._admit_blended(rid, prompt, params, prior, plan)
            if first is None:
                admit = lambda engine: engine.add_request(prompt, params, rid, num_prior_output_tokens=prior)
                async for out in run_streaming(self.engine_loop, rid, admit):
                    self.prefilled(rid)
                    yield out
                return
        finally:
            self.prefilled(rid)
        yield first
        if first.finished:
            return
        try:
            async for out in stream:
                out.num_cached_tokens = first.num_cached_tokens  # the engine saw the KV arrive, not its reuse
                yield out
        finally:
            if not stream.finished:
                self.engine_loop.unsubscribe(rid)
                self.engine_loop.call(lambda engine: engine.abort(rid))

    async def _admit_blended(self, rid: str, prompt: list[int], params: SamplingParams, prior: int,
                             plan: RequestPlan) -> RequestOutput | None:
        def admit(engine):
            engine.validate(prompt, params, rid, prior)
            outcome = self.cache.blend(engine, rid, prompt, plan, params, prior)
            if outcome is not None:
                engine.admit_prefilled(rid, prompt, outcome.sample.token_id, params, prior, register_prefix=False)
            return outcome
        try:
            outcome = await self._on_engine(admit)
        except BaseException:
            self.engine_loop.unsubscribe(rid)
            raise
        if outcome is None or outcome.finish_reason is not None:
            self.engine_loop.unsubscribe(rid)
        if outcome is None:
            return None
        s = outcome.sample
        return RequestOutput(rid, [s.token_id], "", outcome.finish_reason is not None, outcome.finish_reason,
                             [(s.logprob, s.top_logprobs)] if s.logprob is not None else [], len(prompt), prior + 1,
                             num_cached_tokens=len(prompt) - round(outcome.computed_rows))

    async def ingest(self, documents: list[str], in_context: bool) -> list[tuple[str, int]]:
        """Computes and stores each document's chunk; -> (content hash, tokens) per document."""
        chunks = [chunk_token_ids(self.cache.engine.tokenizer, d) for d in documents]
        for group in [chunks] if in_context else [[c] for c in chunks]:
            self._check_fits(group)
        entries = []
        for ids in chunks:
            entries += await self._on_engine(lambda engine, ids=ids: self.cache.compute_in_context(engine, [ids]))
        if in_context and len(chunks) > 1:
            entries += await self._on_engine(lambda engine: self.cache.compute_in_context(engine, chunks))
        for meta, kv in entries:
            await asyncio.to_thread(self.cache.store.put, meta, kv)
        return [(meta.chunk, meta.num_tokens) for meta, _ in entries[:len(chunks)]]

    def _check_fits(self, chunks: list[list[int]]) -> None:
        """ValueError (-> INVALID_ARGUMENT) unless the special prefix and the chunks fit the context."""
        num_tokens, limit = len(self.cache.prefix) + sum(map(len, chunks)), self.cache.engine.max_model_len
        if num_tokens > limit:
            raise ValueError(f"documents of {num_tokens} tokens (with the special prefix) exceed the context "
                             f"length {limit}")

    def stats(self) -> dict:
        keys = self.cache.store.local_chunks()
        out = self.cache.store.metrics.snapshot()
        out.update(num_local_chunks=len(keys), local_bytes=self.cache.store.local.num_bytes,
                   redis=self.cache.store.remote is not None, chunk_keys=keys[:self.max_stats_keys])
        return out

    async def _on_engine(self, fn: Callable):
        return await asyncio.wrap_future(self.engine_loop.call(fn))

    async def _in_background(self, job: Callable):
        """Off-path work, a layer at a time, only while no request waits for the engine (EngineLoop.background)."""
        return await asyncio.wrap_future(self.engine_loop.background(job))
