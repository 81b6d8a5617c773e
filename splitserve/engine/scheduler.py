"""Token-budget scheduler (chunked prefill, continuous batching, preemption by recompute).

Every request has `num_computed_tokens` and `num_tokens`; each step gives each running
request, then each waiting one, as many of its missing tokens as the budget allows. Prefill
chunks, prefix-cache hits and decodes all follow from that one rule. When blocks run out, the
most recently admitted running request is preempted: its blocks are freed and it waits to be
recomputed from its tokens so far. Embedding requests (pooling.py) come after generating ones in both
queues and take at most `max_embedding_tokens` of a step: a chat prefill arriving behind a batch of
embeddings runs in the next (short) step, and blocks are taken back from embeddings first.

Priorities (vLLM's `priority`: lower runs sooner; 0 by default) order both queues before the kind
does: a request goes behind those of its priority and before any of a higher value. A waiting
request that cannot start (no sequence slot, or no blocks) preempts the last running request when
that one's priority value is higher (a batch line for an interactive request), as vLLM's priority
scheduling does; equal priorities never preempt each other that way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from splitserve.engine.block_pool import BlockPool
from splitserve.engine.request import Request, Status


@dataclass
class ScheduledChunk:
    request: Request
    num_new_tokens: int
    draft_token_ids: list[int] = field(default_factory=list)  # speculation.py: its last tokens are these drafts

    @property
    def start(self) -> int:
        return self.request.num_computed_tokens

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the request's tokens, so a token is sampled (never for an
        embedding request); one more after each draft."""
        end = self.start + self.num_new_tokens - len(self.draft_token_ids)
        return end == self.request.num_tokens and not self.request.is_embedding

    def input_token_ids(self) -> list[int]:
        drafts = self.draft_token_ids
        return self.request.all_token_ids[self.start:self.start + self.num_new_tokens - len(drafts)] + drafts


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)


class Scheduler:
    def __init__(self, pool: BlockPool, max_num_seqs: int, max_num_batched_tokens: int,
                 max_embedding_tokens_per_step: int | None = None):
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_embedding_tokens = max_embedding_tokens_per_step or max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, request: Request) -> None:
        _queue(self.waiting, request)

    def add_prefilled(self, request: Request) -> None:
        """A request whose blocks and KV are already in place (decode-only entry): running at once while fewer
        than max_num_seqs run, else waiting with its blocks (its next step computes one token, as a decode)."""
        if len(self.running) >= self.max_num_seqs:
            _queue(self.waiting, request)
            return
        request.status = Status.RUNNING
        _queue(self.running, request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        """Generating requests first (running, then waiting), then embedding requests (running, then waiting:
        none is admitted while a generating one waits) within `max_embedding_tokens` of what is left."""
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens, embeddings=False)
        if not out.preempted:
            budget = self._schedule_waiting(out, budget, embeddings=False)
        budget = self._schedule_running(out, min(budget, self.max_embedding_tokens), embeddings=True)
        if not out.preempted and not (self.waiting and not self.waiting[0].is_embedding):
            self._schedule_waiting(out, budget, embeddings=True)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int, embeddings: bool) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if req.is_embedding != embeddings:
                i += 1
                continue
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            drafts = self._drafts_that_fit(req, n, budget)
            if drafts or self._grow(req, req.num_computed_tokens + n):
                out.chunks.append(ScheduledChunk(req, n + len(drafts), drafts))
                budget -= n + len(drafts)
                i += 1
                continue
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim.request_id)
            if victim is req:
                break
        return budget

    def _drafts_that_fit(self, req: Request, n: int, budget: int) -> list[int]:
        """The drafts a decoding request checks this step (speculation.py): those the budget takes, if the blocks
        for them are free (else none: drafts never preempt anyone)."""
        drafts = req.draft_token_ids[:budget - n] if n == 1 else []
        if drafts and not self._grow(req, req.num_computed_tokens + n + len(drafts)):
            return []
        return drafts

    def _schedule_waiting(self, out: SchedulerOutput, budget: int, embeddings: bool) -> int:
        while self.waiting and budget > 0:
            req = self.waiting[0]
            if req.is_embedding != embeddings:
                break
            if len(self.running) >= self.max_num_seqs:
                freed = self._preempt_for(req, out)
                if freed is None:
                    break
                budget += freed
                continue
            cached = self._take_prefix(req)
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._grow(req, req.num_computed_tokens + n):
                self._free(req)
                freed = self._preempt_for(req, out)
                if freed is None:
                    break
                budget += freed
                continue
            self.waiting.popleft()
            req.status = Status.RUNNING
            req.num_cached_tokens = max(req.num_cached_tokens, cached)
            _queue(self.running, req)
            out.chunks.append(ScheduledChunk(req, n))
            budget -= n
        return budget

    def _preempt_for(self, req: Request, out: SchedulerOutput) -> int | None:
        """Preempt the last running request if its priority value is above `req`'s: the tokens its chunk in
        this step held (now free for others), or None when it may not be preempted."""
        if not self.running or self.running[-1].params.priority <= req.params.priority:
            return None
        victim = self.running.pop()
        chunk = next((c for c in out.chunks if c.request is victim), None)
        if chunk is not None:
            out.chunks.remove(chunk)
        self._preempt(victim)
        out.preempted.append(victim.request_id)
        return 0 if chunk is None else chunk.num_new_tokens

    def _take_prefix(self, req: Request) -> int:
        """Reuse cached blocks of the request's prefix; at least one token is left to compute. A request
        for prompt logprobs or mean pooling computes its whole prompt (a cached block has no logits or hidden
        states)."""
        if req.block_ids or req.needs_every_prompt_row:
            return 0
        hits = self.pool.lookup_prefix(req.all_token_ids[: req.num_tokens - 1], req.hash_root)
        self.pool.acquire(hits)
        req.block_ids = list(hits)
        req.block_hashes = [self.pool.blocks[b].hash for b in hits]
        req.num_computed_tokens = len(hits) * self.pool.block_size
        return req.num_computed_tokens

    def _grow(self, req: Request, num_tokens: int) -> bool:
        needed = -(-num_tokens // self.pool.block_size) - len(req.block_ids)
        if needed <= 0:
            return True
        new = self.pool.allocate(needed)
        if new is None:
            return False
        req.block_ids.extend(new)
        return True

    def _preempt(self, req: Request) -> None:
        self._free(req)
        req.status = Status.WAITING
        _queue(self.waiting, req, first_of_its_kind=True)

    def _free(self, req: Request) -> None:
        self.pool.release(req.block_ids)
        req.block_ids, req.block_hashes = [], []
        req.num_computed_tokens = 0

    def commit(self, out: SchedulerOutput) -> None:
        """After the step ran: advance counters and publish newly full blocks for prefix reuse."""
        for chunk in out.chunks:
            chunk.request.num_computed_tokens += chunk.num_new_tokens
            self._register_full_blocks(chunk.request)

    def _register_full_blocks(self, req: Request) -> None:
        """Blocks whose tokens are all computed and known (a step's kept drafts join the tokens after commit())."""
        size = self.pool.block_size
        tokens = req.all_token_ids
        while (len(req.block_hashes) + 1) * size <= min(req.num_computed_tokens, len(tokens)):
            j = len(req.block_hashes)
            parent = req.block_hashes[-1] if req.block_hashes else req.hash_root
            req.block_hashes.append(self.pool.register_full(req.block_ids[j], parent, tokens[j * size:(j + 1) * size]))

    def finish(self, req: Request, keep_blocks: bool = False) -> None:
        """Remove a finished or aborted request; its blocks go back unless the caller keeps them."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.status = Status.FINISHED
        if not keep_blocks:
            self.release_blocks(req)

    def release_blocks(self, req: Request) -> None:
        self.pool.release(req.block_ids)
        req.block_ids, req.block_hashes = [], []


def _queue(requests, req: Request, first_of_its_kind: bool = False) -> None:
    """Requests go in (priority, kind) order, generating before embedding: `req` goes behind those of its
    rank, before any of a later one (the waiting queue and the running list are both taken front to back, and
    the running list preempted from the back); `first_of_its_kind` (a preempted request) puts it before the
    others of its rank instead."""
    rank = _rank(req)
    later = (lambda r: _rank(r) >= rank) if first_of_its_kind else (lambda r: _rank(r) > rank)
    requests.insert(next((i for i, r in enumerate(requests) if later(r)), len(requests)), req)


def _rank(req: Request) -> tuple[int, bool]:
    return req.params.priority, req.is_embedding
