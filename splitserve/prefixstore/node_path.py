"""A node's prefix store around its admissions and its finished requests:

1. Before a request is admitted, the blocks of its prompt that this node's prefix cache lacks are read from Redis
   on a reader thread (the leading run Redis holds), then written into free blocks of the pool on the engine thread
   just before the request is admitted, where the engine's prefix lookup finds them: its prefill computes the rest.
2. After its prefill, the blocks Redis is not known to hold are copied out on the engine thread (one index_select
   per layer) and written to Redis on a writer thread, off the request's path; at most `max_pending_stores` at a
   time (more: not stored, counted).
3. After a request finished on a mixed or decode node, the blocks its output filled are stored the same way: a
   conversation's next turn sends this answer back inside its prompt, and reads them wherever it lands.

Redis not answering is counted and costs nothing else: the request is computed as without the store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import AsyncIterator, Callable

from splitserve.chunkcache.keys import model_fingerprint
from splitserve.engine import Engine, RequestOutput, SamplingParams
from splitserve.prefixstore.engine_blocks import (ExportedBlocks, PromptBlocks, cached_here, export_blocks,
                                                  import_blocks, shareable_blocks)
from splitserve.prefixstore.redis_blocks import RedisBlocks
from splitserve.redis_pipe import TierUnavailable
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.torch_threads import keep_this_thread_serial

log = logging.getLogger(__name__)
KNOWN_MAX = 1 << 16  # block hashes remembered as held by Redis (not stored again)
WARN_EVERY_S = 60.0
SPARE_BUFFERS = 2
SPARE_MAX_BYTES = 128 << 20  # 2,800 tokens of SmolLM2's fp32 KV
COUNTS = ("requested_tokens", "hit_tokens", "stored_tokens", "redis_errors", "skipped_stores", "stores",
          "store_seconds")


class PrefixStore:
    def __init__(self, engine_loop: EngineLoop, redis: RedisBlocks, max_pending_stores: int = 4,
                 store_answers: bool = True):
        self.engine_loop, self.redis, self.max_pending_stores = engine_loop, redis, max_pending_stores
        self.store_answers = store_answers  # off: storing_outputs() stores no answer
        self.engine: Engine = engine_loop.engine
        # their torch work (decoding, encoding values) stays serial, or it slows the engine thread's (torch_threads.py)
        self._reader = ThreadPoolExecutor(2, "prefix-store-read", initializer=keep_this_thread_serial)
        self._writer = ThreadPoolExecutor(1, "prefix-store-write", initializer=keep_this_thread_serial)
        self._known: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pending_stores = 0
        self._quiet_until = 0.0  # no Redis failure is logged before then
        self._spare_buffers: list = []  # export buffers (engine_blocks.export_buffer) free for reuse
        self.counts = dict.fromkeys(COUNTS, 0)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, **self.redis.counts}

    def wait_stored(self, timeout_s: float = 30.0) -> bool:
        """Whether every store under way finished within timeout_s (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending_stores:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
        self._writer.shutdown(wait=False, cancel_futures=True)

    async def admission(self, prompt: list[int], params: SamplingParams, admit: Callable[[Engine], object]):
        """(the admit to run instead: the blocks read from Redis, then `admit`; the prompt's blocks, to store after
        its prefill, or None)."""
        blocks = shareable_blocks(self.engine, prompt, params)
        if blocks is None or not blocks.hashes:
            return admit, None
        start = cached_here(self.engine, blocks)
        if start == len(blocks.hashes):
            return admit, blocks
        kvs = await asyncio.get_running_loop().run_in_executor(self._reader, self._fetch, blocks, start)
        if not kvs:
            return admit, blocks

        def import_then_admit(engine: Engine):
            self._add("hit_tokens", import_blocks(engine, blocks, start, kvs) * engine.config.block_size)
            return admit(engine)
        return import_then_admit, blocks

    def _fetch(self, blocks: PromptBlocks, start: int) -> list:
        hashes = list(blocks.hashes[start:])
        self._add("requested_tokens", len(hashes) * self.redis.block_size)
        try:
            kvs = self.redis.get(hashes, start)
        except TierUnavailable as exc:
            self._redis_failed("read", exc)
            return []
        self._remember(hashes[:len(kvs)])
        return kvs

    def prefilled(self, blocks: PromptBlocks | None) -> None:
        """After the prompt's prefill: stores the blocks Redis lacks (those still in the prefix cache)."""
        if blocks is not None:
            self._store_from(blocks, 0)

    def generated(self, prompt: list[int], params: SamplingParams, output_token_ids: list[int]) -> None:
        """After a request finished: stores the blocks its output filled (the prompt's own were stored after its
        prefill, here or on a prefill node). Its last token was never computed, as a prompt's last token."""
        blocks = shareable_blocks(self.engine, prompt + output_token_ids, params)
        if blocks is not None:
            self._store_from(blocks, (len(prompt) - 1) // self.redis.block_size)

    def _store_from(self, blocks: PromptBlocks, first: int) -> None:
        """Stores blocks first, first + 1, ... that Redis is not known to hold and the prefix cache holds; nothing
        while Redis is marked down (no copy on the engine thread for a write that would fail)."""
        if self.redis.marked_down:
            return
        with self._lock:
            wanted = [j for j in range(first, len(blocks.hashes)) if blocks.hashes[j] not in self._known]
            if not wanted:
                return
            if self._pending_stores >= self.max_pending_stores:
                self.counts["skipped_stores"] += 1
                return
            self._pending_stores += 1
            fits = [i for i, b in enumerate(self._spare_buffers) if b.shape[2] >= len(wanted)]
            buffer = self._spare_buffers.pop(fits[-1]) if fits else None  # the smallest that fits
        since = time.monotonic()
        copied = self.engine_loop.call(lambda engine: export_blocks(engine, blocks, wanted, buffer))
        copied.add_done_callback(lambda f: self._writer.submit(self._store, f, since))

    def _store(self, copied: Future, since: float) -> None:
        try:
            exported: ExportedBlocks | None = copied.result()
            if exported is not None:
                self._put(exported)
                self._add("store_seconds", time.monotonic() - since)
                self._keep_spare(exported.buffer)
        except TierUnavailable as exc:
            self._redis_failed("write", exc)
        except Exception:  # a failed store must not take the node down
            log.exception("storing prompt blocks in the prefix store failed")
        finally:
            with self._lock:
                self._pending_stores -= 1

    def _put(self, exported: ExportedBlocks) -> None:
        missing = self.redis.missing(exported.hashes)
        fresh = [(h, exported.block(i, self.redis.block_size)) for i, h in enumerate(exported.hashes) if missing[i]]
        if fresh:
            self.redis.put(fresh)
        self._remember(exported.hashes)
        self._add("stored_tokens", len(fresh) * self.redis.block_size)
        self._add("stores", 1)

    def _keep_spare(self, buffer) -> None:
        """Kept for the next exports (fresh memory costs 4x the copy into it here): the largest SPARE_BUFFERS, each
        at most SPARE_MAX_BYTES."""
        if buffer.numel() * buffer.element_size() > SPARE_MAX_BYTES:
            return
        with self._lock:
            self._spare_buffers = sorted(self._spare_buffers + [buffer], key=lambda b: -b.shape[2])[:SPARE_BUFFERS]

    def _redis_failed(self, what: str, exc: Exception) -> None:
        """Counted every time, logged at most once a minute."""
        with self._lock:
            self.counts["redis_errors"] += 1
            quiet = time.monotonic() < self._quiet_until
            self._quiet_until = max(self._quiet_until, time.monotonic() + WARN_EVERY_S)
        if not quiet:
            log.warning("prefix store: a Redis %s failed (the prompt is computed; said once a minute): %s", what, exc)

    def _remember(self, hashes: list[bytes]) -> None:
        with self._lock:
            for h in hashes:
                self._known[h] = None
                self._known.move_to_end(h)
            while len(self._known) > KNOWN_MAX:
                self._known.popitem(last=False)

    def _add(self, name: str, n: float) -> None:
        with self._lock:
            self.counts[name] += n


async def shared_admission(store: PrefixStore | None, prompt: list[int], params: SamplingParams,
                           admit: Callable[[Engine], object]) -> "Admission":
    """Admit the request with the result's `admit`, and call its `prefilled()` once the prefill is done (its
    first output). Without a store, `admit` is the one given and nothing is stored."""
    if store is None:
        return Admission(None, admit, None)
    return Admission(store, *await store.admission(prompt, params, admit))


class Admission:
    def __init__(self, store: PrefixStore | None, admit, blocks: PromptBlocks | None):
        self.store, self.admit, self.blocks = store, admit, blocks

    def prefilled(self) -> None:
        if self.store is not None and self.blocks is not None:
            self.store.prefilled(self.blocks)
            self.blocks = None  # once


def storing_outputs(store: PrefixStore | None, prompt: list[int], params: SamplingParams,
                    outputs: AsyncIterator[RequestOutput], sent: tuple[int, ...] = ()) -> AsyncIterator[RequestOutput]:
    """`outputs` (a request's: its tokens after `prompt` and the tokens `sent` elsewhere, as a decode node's first
    token); once it finished, the blocks its output filled are stored. Without a store storing answers: `outputs`
    itself (no per-token work)."""
    if store is None or not store.store_answers:
        return outputs
    return _storing_outputs(store, prompt, params, outputs, list(sent))


async def _storing_outputs(store: PrefixStore, prompt: list[int], params: SamplingParams,
                           outputs: AsyncIterator[RequestOutput], generated: list[int]) -> AsyncIterator[RequestOutput]:
    async for out in outputs:
        generated += out.new_token_ids
        if out.finished and out.finish_reason != "abort":
            store.generated(prompt, params, generated)
        yield out


def build_prefix_store(url: str | None, ttl_s: int, model_dir: str, engine_loop: EngineLoop,
                       store_answers: bool = True) -> PrefixStore | None:
    """The prefix store of a node (None without a URL). Its keys carry the model's fingerprint,
    the KV cache's dtype (--kv-cache-dtype) and the block size: only nodes computing the same KV share blocks."""
    if not url:
        return None
    engine = engine_loop.engine
    mc = engine.model_config
    redis = RedisBlocks(url, model_fingerprint(model_dir), engine.config.kv_torch_dtype, engine.config.block_size,
                        (mc.num_layers, mc.num_kv_heads, mc.head_dim), ttl_s)
    if not redis.pipe.ping():
        log.warning("prefix store: Redis at %s does not answer now; prompts are computed until it does", url)
    log.info("prefix store: prompt%s blocks shared through %s (TTL %d s)", " and answer" if store_answers else "",
             url, ttl_s)
    return PrefixStore(engine_loop, redis, store_answers=store_answers)
