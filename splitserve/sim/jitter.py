"""Step-time spread: decode steps drawn from the profile's measured distribution, not its median.

`splitserve profile` times every decode shape's steps back to back and keeps each step's time
over its shape's median (`points.decode_step_ratios`). With `ClusterConfig.step_jitter`, each
decode-only step of a node takes its modelled time times one of those ratios, drawn with
replacement from a generator seeded by (seed, node name): the same configuration and seed give
the same results. Steps then run one by one (no decode jumps: jump.py sums a fixed step time).
Prefill steps keep their modelled time (the profile times two of each, too few for a spread).
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class StepJitter:
    def __init__(self, ratios: Sequence[float], seed: int, name: str):
        if not ratios or min(ratios) <= 0:
            raise ValueError("step jitter needs measured step-time ratios > 0 (re-run `splitserve profile`)")
        self.ratios = tuple(ratios)
        self.rng = random.Random(f"{seed}:{name}")

    def __call__(self) -> float:
        return self.ratios[int(self.rng.random() * len(self.ratios))]

    @classmethod
    def for_node(cls, profile, seed: int, name: str) -> "StepJitter":
        ratios = (profile.points or {}).get("decode_step_ratios")
        if not ratios:
            raise ValueError(f"the profile of {name} has no decode_step_ratios: step jitter needs a profile "
                             "taken with this version of `splitserve profile`")
        return cls(ratios, seed, name)
