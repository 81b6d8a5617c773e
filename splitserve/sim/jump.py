"""Several decode steps as one event, when nothing can change them.

A node whose running requests are all decoding, with nothing waiting and no call pending,
runs the same batch step after step until a request finishes: each step's context grows by
the batch size, so step j lasts base + slope * j and the first m steps take
m * base + slope * m (m - 1) / 2. A jump is planned up to the next finish (at most
MAX_STEPS, and only if the free blocks cover every block the batch grows into meanwhile).
A router call arriving mid-jump cuts it at the end of the step in progress: the call runs
there, as on the node's engine thread.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

MAX_STEPS = 512


@dataclass(slots=True)
class Jump:
    start_s: float
    steps: int
    base_s: float
    slope_s: float
    num_decodes: int

    def elapsed_s(self, m: int) -> float:
        return m * self.base_s + self.slope_s * m * (m - 1) / 2

    def steps_by(self, t: float) -> int:
        """Steps done when the step running at time t ends (at least 1, at most `steps`): the least m
        with start + elapsed(m) >= t, from the quadratic's root, then checked by that very test
        (the root's rounding can be one step off)."""
        start, elapsed = self.start_s, self.elapsed_s
        m = min(max(self._root(t - start), 1), self.steps)
        while m > 1 and start + elapsed(m - 1) >= t:
            m -= 1
        while m < self.steps and start + elapsed(m) < t:
            m += 1
        return m

    def _root(self, dt: float) -> int:
        """ceil of the m solving m * base + slope * m (m - 1) / 2 = dt."""
        a, b = self.slope_s / 2, self.base_s - self.slope_s / 2
        if a <= 0:
            return math.ceil(dt / b) if b > 0 else 1
        return math.ceil((-b + math.sqrt(b * b + 4 * a * dt)) / (2 * a)) if b * b + 4 * a * dt >= 0 else 1


def plan_jump(node, now: float) -> Jump | None:
    """A jump of >= 2 steps, or None (then the node takes one ordinary step)."""
    n = len(node.decoding)
    if not n or node.waiting or node.prefilling or node.calls or n > node.budget:
        return None
    steps = min(MAX_STEPS, _steps_to_finish(node))
    if steps < 2 or node.grows_in(node.dstep, steps) > node.free_blocks:
        return None
    model = node.step_model
    base = model.seconds(n, n, 0.0, node.sum_tokens)
    slope = model.seconds(n, n, 0.0, node.sum_tokens + n) - base
    if slope < 0 or base <= model.min_step_s:
        return None
    return Jump(now, steps, base, slope, n)


def _steps_to_finish(node) -> int:
    heap = node.finish_heap
    while heap and (heap[0][2] != heap[0][3].dgen or heap[0][3] not in node.decoding):
        heapq.heappop(heap)
    return heap[0][0] - node.dstep + 1 if heap else 0


def apply_jump(node, jump: Jump, m: int) -> list:
    """Commit m steps of the jump: the blocks grown on the way, the counters; the finished."""
    node.free_blocks -= node.grows_in(node.dstep, m)
    node.touch()
    node.dstep += m
    node.sum_tokens += m * jump.num_decodes
    seconds = jump.elapsed_s(m)
    node.busy_s += seconds
    node.num_steps += m
    return node._pop_decode_finishes()
