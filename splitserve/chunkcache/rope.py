"""RoPE re-positioning of cached K: K at positions `old` -> K at positions `new`.

RoPE is a rotation R(p) per pair of dimensions with R(a)R(b) = R(a+b), so a post-RoPE K moves
by R(new - old); a pre-RoPE K gets R(new). Angles are built in float64 so large shifts stay exact.
"""

from __future__ import annotations

import torch

from splitserve.engine.rope import apply_rotary, inv_frequencies


class RopeShifter:
    def __init__(self, head_dim: int, theta: float, scaling: dict | None):
        self.inv_freq = inv_frequencies(head_dim, theta, scaling).double()  # [D/2]

    def tables(self, delta: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """delta: [n] position shifts (any sign) -> cos, sin: [n, 1, D] of R(delta)."""
        freqs = delta.double()[:, None] * self.inv_freq.to(delta.device)[None, :]  # [n, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]

    def rotate(self, k: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """k: [n, heads, D] -> R(delta) k."""
        return apply_rotary(k, *self.tables(delta, k.dtype))

    def shift(self, k: torch.Tensor, old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        """k rotated at positions `old` (None: pre-RoPE) -> k rotated at positions `new`."""
        delta = new if old is None else new - old
        if old is not None and not bool(delta.any()):
            return k
        return self.rotate(k, delta)

    @classmethod
    def for_model(cls, cfg) -> "RopeShifter":
        return cls(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
