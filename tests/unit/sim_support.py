"""Profiles and helpers for the simulator tests (no measurement: fixed step models)."""

from __future__ import annotations

from splitserve.sim.fit import Breakpoints
from splitserve.sim.profile import EngineShape, Profile, StepModel


def linear_profile(c0: float = 0.01, per_token: float = 0.001, per_seq: float = 0.0005, attn: float = 1e-7,
                   ctx: float = 1e-6, num_blocks: int = 4096, block_size: int = 16, max_num_seqs: int = 64,
                   budget: int = 2048, one_shot: int = 256) -> Profile:
    """step_s = c0 + per_token*T + per_seq*S + attn*A + ctx*C; transfer 1 ms + 1 GB/s."""
    shape = EngineShape(block_size=block_size, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=budget, kv_bytes_per_token=16384, num_layers=8,
                        one_shot_max_tokens=one_shot)
    transfer = {"torch": Breakpoints((0.0, 1e9), (0.001, 1.001)), "grpc": Breakpoints((0.0, 1e9), (0.002, 2.002))}
    return Profile(StepModel((), (c0, per_token, per_seq, attn, ctx), 1e-6), shape, transfer, {"model": "test"})


def all_roles(profile: Profile) -> dict[str, Profile]:
    return {"prefill": profile, "decode": profile, "mixed": profile}
