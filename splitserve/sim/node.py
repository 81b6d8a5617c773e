"""One node's engine in simulated time: the token-budget scheduler of splitserve/engine/scheduler.py.

Each step gives every running request (in admission order), then each waiting one, as many of
its missing tokens as the budget allows; a request whose blocks cannot grow preempts the most
recently admitted running request (blocks freed, recomputed later from its tokens so far).
Calls from the router (add a request, reserve blocks, admit a prefilled request) run between
steps, as on the node's engine thread. A step's duration comes from the profile's StepModel.

Speed: requests in the decode phase (one token missing) are kept lazily. Their counters
follow from the node's decode-step count (`dstep`), their finishing steps sit in a heap and
their block growth from one count per step residue (a request needs a new block every
`block_size` steps, from its first growth step on), so a step where everyone gets what
it asks for (demand within the budget, blocks within the free ones: the fast path) costs
O(1) plus the requests that finish or grow. Otherwise (the slow path) every request is
materialised and the scheduler's loop runs exactly, preemption included (node_slow.py).
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import count

from splitserve.sim.node_slow import ExactSteps, prefill_attention
from splitserve.sim.profile import Profile
from splitserve.sim.request import SimRequest


class NodeSim(ExactSteps):
    def __init__(self, name: str, role: str, profile: Profile, changed: list | None = None):
        shape = profile.engine
        self.name, self.role, self.profile = name, role, profile
        self.step_model = profile.step
        self.block_size, self.num_blocks = shape.block_size, shape.num_blocks
        self.max_num_seqs, self.budget = shape.max_num_seqs, shape.max_num_batched_tokens
        self.free_blocks = shape.num_blocks
        self.waiting: deque[SimRequest] = deque()
        self.prefilling: list[SimRequest] = []  # running, more than one token missing; admission order
        self.decoding: dict[SimRequest, None] = {}  # running, one token missing (lazy counters)
        self.dstep = 0
        self.sum_tokens = 0  # sum of num_tokens over `decoding` at dstep
        self.phase_count = [0] * self.block_size  # decoding requests by (step of their next block) % block_size
        self.dirty = False  # changed since the router's last Stats poll (then listed in `changed`)
        self.changed = [] if changed is None else changed
        self.touch()
        self.finish_heap: list = []
        self.seq = count()
        self.busy = False
        self.jump = None  # the jump.Jump in progress, and the version of its pending event
        self.jump_version = 0
        self.calls: list = []  # (fn, args) to run at the next step boundary
        self.busy_s = 0.0
        self.num_steps = 0
        self.num_preemptions = 0
        self.max_waiting = 0
        self.host_peers: list | None = None  # other nodes on this node's host (host.py); None: cores of its own
        self.host_model = None
        self.shared_step: list | None = None  # on a shared host, the step in progress (shared_steps.py)
        self.step_left = self.step_at = self.step_factor = 0.0
        self.step_version = 0
        self.jitter = None  # jitter.StepJitter: decode steps' time factors (None: the modelled time)

    def touch(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.changed.append(self)

    # --- counters ------------------------------------------------------------------------------

    @property
    def last_step_had_prompt(self) -> bool:
        """Whether the step just planned (or run) computed prompt tokens: not decode-only."""
        return self.last_decodes != self.last_seqs

    @property
    def num_running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    def pending_prefill_tokens(self) -> int:
        """EngineStats.num_pending_prefill_tokens: missing tokens of requests still in their prompt."""
        if not self.prefilling and not self.waiting:
            return 0
        return sum(r.num_tokens - r.num_computed for r in self.prefilling if r.num_computed < r.prompt_tokens) + \
            sum(r.num_tokens - r.num_computed for r in self.waiting if r.num_computed < r.prompt_tokens)

    def _sync(self, req: SimRequest) -> None:
        k = self.dstep - req.dbase
        req.num_tokens = req.tok_base + k
        req.num_computed = req.num_tokens - 1
        req.outputs = req.out_base + k
        req.blocks = req.gbase + (0 if self.dstep <= req.gfirst else (self.dstep - req.gfirst - 1) // self.block_size + 1)

    def _enter_decode(self, req: SimRequest) -> None:
        req.dbase, req.tok_base, req.out_base = self.dstep, req.num_tokens, req.outputs
        req.dgen += 1
        self.decoding[req] = None
        self.sum_tokens += req.num_tokens
        heapq.heappush(self.finish_heap, (self.dstep + req.target - req.outputs - 1, req.seq, req.dgen, req))
        req.gbase = req.blocks  # the step at which num_tokens first exceeds the blocks, then every block_size
        req.gfirst = max(self.dstep, req.dbase + req.blocks * self.block_size + 1 - req.tok_base)
        self.phase_count[req.gfirst % self.block_size] += 1

    def grows_in(self, start: int, num_steps: int) -> int:
        """Blocks the decoding requests take in steps [start, start + num_steps)."""
        size, counts = self.block_size, self.phase_count
        full, rest = divmod(num_steps, size)
        total = full * len(self.decoding)  # every decoding request is counted in one phase
        if rest:
            first = start % size
            total += sum(counts[first:first + rest])
            if first + rest > size:
                total += sum(counts[:first + rest - size])
        return total

    def _leave_decode(self, req: SimRequest) -> None:
        self._sync(req)
        self.phase_count[req.gfirst % self.block_size] -= 1
        del self.decoding[req]
        self.sum_tokens -= req.num_tokens
        req.dgen += 1

    # --- calls from the router (between steps) ---------------------------------------------------

    def add_request(self, req: SimRequest) -> None:
        req.num_tokens, req.num_computed, req.blocks = req.prompt_tokens + req.outputs, 0, 0
        self.touch()
        self.waiting.append(req)
        self.max_waiting = max(self.max_waiting, len(self.waiting))

    def reserve(self, num_tokens: int) -> int | None:
        """Blocks for a prompt whose KV will arrive (Engine.reserve); None when short."""
        need = -(-num_tokens // self.block_size)
        if need > self.free_blocks:
            return None
        self.free_blocks -= need
        self.touch()
        return need

    def release(self, num_blocks: int) -> None:
        self.free_blocks += num_blocks
        self.touch()

    def admit_prefilled(self, req: SimRequest, num_blocks: int) -> None:
        """Engine.admit_prefilled: the prompt's KV is in the reserved blocks; the first token is out. Past
        max_num_seqs running it waits with its blocks (Scheduler.add_prefilled)."""
        req.blocks, req.num_tokens, req.num_computed = num_blocks, req.prompt_tokens + req.outputs, req.prompt_tokens + req.outputs - 1
        self.touch()
        if self.num_running >= self.max_num_seqs:
            self.waiting.append(req)
            self.max_waiting = max(self.max_waiting, len(self.waiting))
            return
        req.seq, req.done_here = next(self.seq), False
        self._enter_decode(req)

    # --- one step --------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    def step(self) -> tuple[float, list, list]:
        """Schedule and commit one step: (seconds, finished requests, first tokens sampled).

        Finished: requests done on this node (prefill-only ones keep their blocks:
        `req.blocks` to release later). First tokens: requests whose prompt completed."""
        if not self.dirty:
            self.touch()
        fast = self._fast_plan()
        return self._run_fast(*fast) if fast is not None else self._run_slow()

    def _fast_plan(self):
        n_dec = len(self.decoding)
        demand = n_dec + sum(r.num_tokens - r.num_computed for r in self.prefilling)
        if demand > self.budget:
            return None
        need = self.phase_count[self.dstep % self.block_size] + \
            sum(self._blocks_needed(r, r.num_tokens) for r in self.prefilling)
        if need > self.free_blocks:
            return None
        self.free_blocks -= need
        chunks = []
        for r in self.prefilling:
            r.blocks += self._blocks_needed(r, r.num_tokens)
            chunks.append((r, r.num_tokens - r.num_computed))
        chunks += self._admit_waiting(self.budget - demand)
        return n_dec, chunks

    def _blocks_needed(self, req: SimRequest, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - req.blocks)

    def _grow(self, req: SimRequest, num_tokens: int) -> bool:
        need = self._blocks_needed(req, num_tokens)
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        req.blocks += need
        return True

    def _admit_waiting(self, budget: int) -> list:
        chunks = []
        while self.waiting and budget > 0 and self.num_running < self.max_num_seqs:
            req = self.waiting[0]
            if req.blocks == 0:  # Scheduler._take_prefix: cached leading blocks, one token left to compute
                req.num_computed = min(req.cached_tokens, req.num_tokens - 1) // self.block_size * self.block_size
            n = min(req.num_tokens - req.num_computed, budget)
            if not self._grow(req, req.num_computed + n):
                self._free(req)
                break
            self.waiting.popleft()
            req.seq, req.done_here = next(self.seq), False
            self.prefilling.append(req)
            chunks.append((req, n))
            budget -= n
        return chunks

    def _free(self, req: SimRequest) -> None:
        self.free_blocks += req.blocks
        req.blocks, req.num_computed = 0, 0

    def _run_fast(self, n_dec: int, chunks: list) -> tuple[float, list, list]:
        tokens = n_dec + sum(n for _, n in chunks)
        attention, masked = prefill_attention(chunks)
        seconds = self.step_model.seconds(tokens, n_dec + len(chunks), attention, self.sum_tokens, masked)
        self.dstep += 1
        self.sum_tokens += n_dec
        finished = self._pop_decode_finishes()
        firsts = self._commit_chunks(chunks, finished)
        self.prefilling = [r for r in self.prefilling if not r.done_here]
        self._account(seconds, n_dec, tokens, n_dec + len(chunks))
        return seconds, finished, firsts

    def _pop_decode_finishes(self) -> list:
        finished = []
        heap = self.finish_heap
        while heap and heap[0][0] < self.dstep:
            _, _, gen, req = heapq.heappop(heap)
            if gen != req.dgen or req not in self.decoding:
                continue
            self._leave_decode(req)
            self._finish(req, finished)
        return finished

    def _commit_chunks(self, chunks: list, finished: list) -> list:
        """Advance explicit chunks; a chunk reaching the end of its tokens samples one."""
        firsts = []
        for req, n in chunks:
            req.num_computed += n
            if req.num_computed < req.num_tokens:
                continue
            req.outputs += 1
            if req.outputs == 1:
                firsts.append(req)
            if req.prefill_only or req.outputs >= req.target:
                self._finish(req, finished)
            else:
                req.num_tokens += 1
                req.done_here = True  # leaves `prefilling` (filtered after the commit) for the decode set
                self._enter_decode(req)
        return firsts

    def _finish(self, req: SimRequest, finished: list) -> None:
        req.done_here = True
        if not req.prefill_only:
            self.free_blocks += req.blocks
            req.blocks = 0
        finished.append(req)

    def _account(self, seconds: float, num_decodes: int, num_tokens: int, num_seqs: int) -> None:
        self.busy_s += seconds
        self.num_steps += 1
        self.last_decodes, self.last_tokens, self.last_seqs = num_decodes, num_tokens, num_seqs
