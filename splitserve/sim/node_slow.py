"""NodeSim's exact (slow) path: a step where demand exceeds the budget or the free blocks.

Every running request is materialised (its lazy decode counters made exact) and the engine
scheduler's loop runs as written in splitserve/engine/scheduler.py: running requests in admission
order, each as many missing tokens as the budget allows, preempting the most recently admitted
when blocks run out; then waiting requests. The fast path and the lazy decode state live in node.py.
"""

from __future__ import annotations

from splitserve.sim.request import SimRequest


def prefill_attention(chunks: list) -> tuple[int, int]:
    """(A, M) of profile.py's step model for (request, new tokens) prompt chunks: query-key pairs,
    and those of the chunks that continue a context (the engine's masked attention)."""
    attention = masked = 0
    for r, n in chunks:
        pairs = n * (r.num_computed + n)
        attention += pairs
        if r.num_computed:
            masked += pairs
    return attention, masked


class ExactSteps:
    """Mixed into NodeSim: uses its counters, `_admit_waiting`, `_commit_chunks`, `_grow`, `_free`."""


    def _run_slow(self) -> tuple[float, list, list]:
        running = self._materialise()
        chunks, preempted = self._schedule_running(running)
        if not preempted:
            self.prefilling = running
            chunks += self._admit_waiting(self.budget - sum(n for _, n in chunks))
            running = self.prefilling
        decodes = [r for r, n in chunks if self._decode_phase(r)]
        tokens = sum(n for _, n in chunks)
        attention, masked = prefill_attention([(r, n) for r, n in chunks if not self._decode_phase(r)])
        context = sum(r.num_tokens for r in decodes)
        seconds = self.step_model.seconds(tokens, len(chunks), attention, context, masked) if chunks else 0.0
        num_decodes = len(decodes)
        finished: list = []
        for r in running:
            r.done_here = False
        firsts = self._commit_chunks(chunks, finished)
        self.prefilling = []
        for r in running:
            if r.done_here:
                continue
            if self._decode_phase(r):
                self._enter_decode(r)
            else:
                self.prefilling.append(r)
        self._account(seconds, num_decodes, tokens, len(chunks))
        return seconds, finished, firsts

    @staticmethod
    def _decode_phase(r: SimRequest) -> bool:
        return r.num_tokens - r.num_computed == 1 and r.outputs >= 1 and not r.prefill_only

    def _materialise(self) -> list:
        """Every running request with exact counters, in admission order; lazy state cleared."""
        for r in self.decoding:
            self._sync(r)
            r.dgen += 1
        self.phase_count = [0] * self.block_size
        running = sorted([*self.decoding, *self.prefilling], key=lambda r: r.seq)
        self.decoding, self.prefilling = {}, []
        self.sum_tokens, self.finish_heap = 0, []
        return running

    def _schedule_running(self, running: list) -> tuple[list, list]:
        chunks, preempted, budget, i = [], [], self.budget, 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            if self._grow(req, req.num_computed + n):
                chunks.append((req, n))
                budget -= n
                i += 1
                continue
            victim = running.pop()
            self._free(victim)
            self.waiting.appendleft(victim)
            self.num_preemptions += 1
            preempted.append(victim)
            if victim is req:
                break
        return chunks, preempted
