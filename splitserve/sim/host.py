"""Nodes that share a host's cores: a step stretches while other nodes on the host are busy.

A fleet gives each node cores of its own (the default: no host model). A small cluster on one
machine does not: its node processes share the cores and the memory bandwidth, so a step
that runs while k nodes of the host want the CPU takes `stretch(k)` times its profiled time.

`stretch(k)` comes from measurement (`splitserve profile --corun K`, measure_corun.py): the
same engine steps timed in 1, 2, ... K processes at once on the profiling machine, each ratio
the median step time with k busy processes over the median with 1. Beyond the measured k, the
last ratio grows with the oversubscription, k * threads / cores. A profile without such
measurements falls back to the oversubscription alone (max(1, k * threads / cores)).

Steps of different kinds interfere more than steps of one kind: a decode step next to a
prefill's gemms stretches more than next to another decode step. The profile measures that
pair too (`cross`: each kind's step next to the other kind, over its step alone); a step
whose busy peers include `other` of the other kind (a prefill step: any step with prompt
tokens) takes stretch(k) * (1 + (cross / stretch(2) - 1) * other / (k - 1)): exactly the
measured cross factor for one peer of the other kind, the same-kind stretch for none.

A step's factor comes from the host's nodes that are busy or have work (a node with work is
about to step) and the kind of step each is running or about to run; it is taken again each
time a node of the host starts or ends a step, and the rest of the step runs at the new
factor (shared_steps.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostModel:
    cores: int  # cores of one host
    threads: int = 1  # torch threads of one node
    corun: tuple[float, ...] = ()  # measured stretch with 1, 2, ... busy nodes (corun[0] == 1)
    cross: tuple[float, float] = ()  # (decode next to a prefill, prefill next to a decode) over alone

    def __post_init__(self):
        if self.cores < 1 or self.threads < 1:
            raise ValueError(f"host cores and node threads must be >= 1, got {self.cores}, {self.threads}")
        if any(r <= 0 for r in self.corun + tuple(self.cross)):
            raise ValueError(f"corun stretch factors must be > 0, got {self.corun} {self.cross}")
        if self.cross and len(self.cross) != 2:
            raise ValueError(f"cross needs (decode, prefill) factors, got {self.cross}")
        object.__setattr__(self, "_table", tuple(self.stretch_uncached(k) for k in range(1, 65)))

    def oversubscription(self, busy: int) -> float:
        return max(1.0, busy * self.threads / self.cores)

    def stretch_uncached(self, busy: int) -> float:
        if busy <= len(self.corun):
            return self.corun[busy - 1]
        if not self.corun:
            return self.oversubscription(busy)
        k = len(self.corun)
        return self.corun[-1] * self.oversubscription(busy) / self.oversubscription(k)

    def stretch(self, busy: int) -> float:
        """Step-time factor while `busy` nodes of the host (this one included) want the CPU."""
        return self._table[busy - 1] if busy <= len(self._table) else self.stretch_uncached(busy)

    def mixed_stretch(self, busy: int, prefill_step: bool, other: int) -> float:
        """stretch(busy) for a step of one kind while `other` of its busy peers run the other kind."""
        base = self.stretch(busy)
        if not other or not self.cross:
            return base
        cross = self.cross[1 if prefill_step else 0]
        return base * (1.0 + (cross / self.stretch(2) - 1.0) * other / (busy - 1))

    @classmethod
    def from_profile(cls, profile, cores: int) -> "HostModel":
        """The host model of nodes with this profile on hosts of `cores` cores: the profile's
        measured co-run factors when it was measured on as many cores, else oversubscription only."""
        corun = profile.host.get("corun", {}) if profile.host else {}
        threads = int(profile.meta.get("threads", 1))
        if corun.get("cores") != cores:
            return cls(cores=cores, threads=threads)
        cross = corun.get("cross") or {}
        pair = (cross["decode"], cross["prefill"]) if {"decode", "prefill"} <= set(cross) else ()
        return cls(cores=cores, threads=threads, corun=tuple(corun.get("stretch", ())), cross=pair)


def assign_hosts(num_nodes: int, nodes_per_host: int) -> list[int]:
    """Host index per node, in node order (0: every node on one host)."""
    if nodes_per_host < 0:
        raise ValueError(f"nodes_per_host must be >= 0, got {nodes_per_host}")
    per = nodes_per_host or max(1, num_nodes)
    return [i // per for i in range(num_nodes)]
