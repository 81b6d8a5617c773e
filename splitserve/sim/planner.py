"""`splitserve plan`: the cheapest configuration whose simulated run meets the SLOs.

A configuration is P prefill nodes of one kind, D decode nodes of a kind, M mixed nodes of a
kind, and a routing policy; its cost is the sum of its nodes' costs per hour (any unit). It
meets the SLOs when at least `attainment` of all requests (refused ones count as misses)
have TTFT and TPOT within their SLOs, DistServe's SLO attainment. The search, per policy and
kinds: colocated M alone (smallest M by doubling then bisection), and for each P the
smallest D the same way, stopping once P alone costs more than the best found; Splitwise's
policy also tries the best split with one or two mixed nodes taking a prefill or decode
node's place. Every simulated configuration is a point of the goodput frontier.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from splitserve.sim.cluster import ClusterConfig
from splitserve.sim.profile import Profile
from splitserve.sim.runner import simulate


@dataclass(frozen=True)
class NodeKind:
    name: str
    profile: Profile
    cost: float = 1.0

    def __post_init__(self):
        if not self.cost > 0:
            raise ValueError(f"node kind {self.name}: cost must be > 0, got {self.cost}")


@dataclass(frozen=True)
class PlanConfig:
    slos_ms: dict  # ttft, tpot
    attainment: float = 0.99
    policies: tuple[str, ...] = ("least_loaded", "splitwise")
    max_nodes: int = 64
    base: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self):
        if not self.slos_ms or set(self.slos_ms) - {"ttft", "tpot", "e2el"}:
            raise ValueError(f"SLOs must name some of ttft, tpot, e2el; got {self.slos_ms}")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"attainment must be in (0, 1], got {self.attainment}")
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {self.max_nodes}")


@dataclass
class Candidate:
    prefill: int
    decode: int
    mixed: int
    policy: str
    kinds: tuple[str, str, str]  # prefill, decode, mixed kind names
    cost: float
    attainment: float
    goodput: float
    p99_ttft_ms: float
    p99_tpot_ms: float
    failed: int

    def meets(self, target: float) -> bool:
        return self.attainment >= target

    def row(self) -> dict:
        return dict(vars(self))


class Planner:
    def __init__(self, requests: list, kinds: list[NodeKind], config: PlanConfig, log=lambda line: None):
        if not kinds:
            raise ValueError("give at least one node kind (--kind NAME=PROFILE.json[:COST])")
        self.requests, self.kinds, self.config, self.log = requests, kinds, config, log
        self.seen: dict[tuple, Candidate] = {}

    def evaluate(self, p: int, d: int, m: int, policy: str, kinds: tuple[NodeKind, NodeKind, NodeKind]) -> Candidate:
        key = (p, d, m, policy, tuple(k.name for k in kinds))
        if key not in self.seen:
            cluster = replace(self.config.base, prefill=p, decode=d, mixed=m, policy=policy)
            profiles = {role: k.profile for role, k in zip(("prefill", "decode", "mixed"), kinds)}
            result = simulate(self.requests, cluster, profiles, percentiles=(99.0,), slos_ms=self.config.slos_ms)
            good = round((result["request_goodput"] or 0.0) * result["duration"])
            cost = p * kinds[0].cost + d * kinds[1].cost + m * kinds[2].cost
            self.seen[key] = Candidate(p, d, m, policy, key[4], cost, good / len(self.requests),
                                       result["request_goodput"] or 0.0, result["p99_ttft_ms"],
                                       result["p99_tpot_ms"], result["failed"])
            c = self.seen[key]
            self.log(f"P={p} D={d} M={m} {policy}: attainment {c.attainment:.1%}, p99 TTFT {c.p99_ttft_ms:.0f} ms, "
                     f"p99 TPOT {c.p99_tpot_ms:.0f} ms, cost {c.cost:g}")
        return self.seen[key]

    def smallest(self, meets_with) -> int | None:
        """Smallest n in [1, max_nodes] with meets_with(n), assuming more nodes never hurt."""
        hi = 1
        while not meets_with(hi):
            if hi >= self.config.max_nodes:
                return None
            hi = min(2 * hi, self.config.max_nodes)
        lo = hi // 2 + 1 if hi > 1 else 1
        while lo < hi:
            mid = (lo + hi) // 2
            if meets_with(mid):
                hi = mid
            else:
                lo = mid + 1
        return hi

    def search(self) -> Candidate | None:
        target = self.config.attainment
        for policy in self.config.policies:
            for mixed_kind in self.kinds:
                kinds = (mixed_kind, mixed_kind, mixed_kind)
                self.smallest(lambda m: self.evaluate(0, 0, m, policy, kinds).meets(target))
            for pk, dk in itertools.product(self.kinds, self.kinds):
                self._split(policy, (pk, dk, pk))
        return self.best()

    def _split(self, policy: str, kinds: tuple) -> None:
        target, best = self.config.attainment, None
        for p in range(1, self.config.max_nodes):
            if best is not None and p * kinds[0].cost >= best.cost:
                break
            d = self.smallest(lambda n: p + n <= self.config.max_nodes and self.evaluate(p, n, 0, policy, kinds).meets(target))
            if d is not None and (best is None or self.evaluate(p, d, 0, policy, kinds).cost < best.cost):
                best = self.evaluate(p, d, 0, policy, kinds)
        if best is not None and policy == "splitwise":
            for p, d, m in ((best.prefill - 1, best.decode, 1), (best.prefill, best.decode - 1, 1),
                            (best.prefill - 1, best.decode - 1, 2)):
                if p >= 1 and d >= 1:
                    self.evaluate(p, d, m, policy, kinds)

    def best(self) -> Candidate | None:
        meeting = [c for c in self.seen.values() if c.meets(self.config.attainment)]
        return min(meeting, key=lambda c: (c.cost, -c.goodput, c.prefill + c.decode + c.mixed)) if meeting else None

    def frontier(self) -> list[Candidate]:
        """Configurations no cheaper one beats on goodput: cost ascending, goodput rising."""
        out: list[Candidate] = []
        for c in sorted(self.seen.values(), key=lambda c: (c.cost, -c.goodput)):
            if not out or c.goodput > out[-1].goodput:
                out.append(c)
        return out


def helm_values(c: Candidate, max_queue: int, kinds: list[NodeKind] = ()) -> str:
    """values.yaml keys of helm/splitserve for the chosen configuration; `model.kvCacheDtype` too where its kinds'
    profiles were measured with a KV cache dtype other than the model's (their capacity and transfers assume it)."""
    lines = ["routing:", f"  policy: {c.policy}", f"  maxQueue: {max_queue}"]
    measured = {k.profile.meta.get("kv_cache_dtype", k.profile.meta.get("dtype")) for k in kinds if k.name in c.kinds}
    model_dtypes = {k.profile.meta.get("dtype") for k in kinds if k.name in c.kinds}
    if len(measured) == 1 and measured != model_dtypes:
        lines += ["model:", f"  kvCacheDtype: {measured.pop()}"]
    for role, n in (("prefill", c.prefill), ("decode", c.decode), ("mixed", c.mixed)):
        lines += [f"{role}:", f"  enabled: {'true' if n else 'false'}"] + ([f"  replicas: {n}"] if n else [])
    return "\n".join(lines)


def summary_table(cands: list[Candidate]) -> str:
    head = f"{'P':>4} {'D':>4} {'M':>4} {'policy':<13} {'cost':>7} {'attain':>7} {'goodput':>8} {'p99 TTFT':>9} {'p99 TPOT':>9}"
    rows = [f"{c.prefill:>4} {c.decode:>4} {c.mixed:>4} {c.policy:<13} {c.cost:>7g} {c.attainment:>7.1%} "
            f"{c.goodput:>8.2f} {c.p99_ttft_ms:>9.0f} {c.p99_tpot_ms:>9.0f}" for c in cands]
    return "\n".join([head] + rows)

