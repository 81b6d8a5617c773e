"""Steps of nodes that share a host's cores, stretched as the host's load changes mid-step.

A node's step on a shared host (host.py) runs at 1 / factor of its profiled speed, where the
factor follows from the host's nodes that are busy or have work and the kind of step each runs.
The factor is taken again whenever a node of the host starts or ends a step: the step's
remaining profiled work is what was left less the time since at the old factor, and its end
moves to now + remaining * the new factor (processor sharing, as the OS scheduler gives the
cores). With the factor fixed at a step's start, a 0.9 s prefill that began while the decode
node idled ran unstretched even when the decode node woke 0.1 s later and decoded beside it
throughout (simulator validation, 1P+1D: such bursts measured up to 1.7x the prediction).
"""

from __future__ import annotations

import heapq

from splitserve.sim.node import NodeSim


class SharedHostSteps:
    """Mixed into ClusterSim: uses `events`, `order`, `now` and `_step_done`."""

    def _start_shared_step(self, node: NodeSim, start: float, seconds: float, finished: list, firsts: list) -> None:
        node.shared_step = [start, seconds, finished, firsts]
        node.step_left, node.step_at, node.step_factor = seconds, self.now, 0.0
        self._restretch_host(node)

    def _restretch_host(self, node: NodeSim) -> None:
        for p in (node, *node.host_peers):
            if p.shared_step is not None:
                self._restretch(p)

    def _restretch(self, node: NodeSim) -> None:
        if node.step_factor:
            node.step_left = max(0.0, node.step_left - (self.now - node.step_at) / node.step_factor)
        node.step_at, node.step_factor = self.now, host_factor(node)
        node.step_version += 1
        heapq.heappush(self.events, (self.now + node.step_left * node.step_factor, next(self.order),
                                     self._shared_step_done, (node, node.step_version)))

    def _shared_step_done(self, item) -> None:
        node, version = item
        if version != node.step_version:
            return  # re-timed since: a later event ends it
        start, seconds, finished, firsts = node.shared_step
        node.shared_step = None
        elapsed = self.now - start
        node.busy_s += elapsed - seconds
        self._step_done((node, start, elapsed, finished, firsts))
        if node.shared_step is None:  # idle now (a new step re-timed the host when it started)
            self._restretch_host(node)


def host_factor(node: NodeSim) -> float:
    """The node's step-time factor from its host's state now (host.py's mixed_stretch)."""
    prefill_step = node.last_step_had_prompt
    busy, other = 1, 0
    for p in node.host_peers:
        if p.busy or p.waiting or p.prefilling or p.decoding:
            busy += 1
            other += runs_prefill(p) != prefill_step
    return node.host_model.mixed_stretch(busy, prefill_step, other)


def runs_prefill(node: NodeSim) -> bool:
    """Whether a node's current step (busy) or next one (idle with work) has prompt tokens."""
    if node.busy:
        return node.last_step_had_prompt
    return bool(node.waiting or node.prefilling)
