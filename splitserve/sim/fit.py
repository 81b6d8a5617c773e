"""Piecewise-linear fits: hinge-basis least squares and interpolation through medians.

A hinge model y = c0 + c1*x + sum_k q_k * max(0, x - knot_k) is linear in its coefficients,
so ordinary least squares fits it; extra linear features (sequences, attention work) join the
same design matrix. Interpolation (Breakpoints) is for curves measured at few points.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np


def hinge_features(x: np.ndarray, knots: Sequence[float]) -> np.ndarray:
    """[n, 2 + len(knots)]: 1, x, max(0, x - knot) per knot."""
    x = np.asarray(x, dtype=float)
    cols = [np.ones_like(x), x] + [np.maximum(0.0, x - k) for k in knots]
    return np.stack(cols, axis=1)


def least_squares(design: np.ndarray, y: np.ndarray, relative: bool = True) -> np.ndarray:
    """Coefficients minimising the (relative, when `relative`) squared error."""
    y = np.asarray(y, dtype=float)
    if design.shape[0] < design.shape[1]:
        raise ValueError(f"{design.shape[0]} points cannot fit {design.shape[1]} coefficients")
    weights = 1.0 / np.maximum(y, 1e-9) if relative else np.ones_like(y)
    coef, *_ = np.linalg.lstsq(design * weights[:, None], y * weights, rcond=None)
    return coef


@dataclass(frozen=True)
class Breakpoints:
    """y(x) through sorted points, linear between them and extended along the end segments."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __post_init__(self):
        if len(self.xs) != len(self.ys) or not self.xs:
            raise ValueError("breakpoints need as many ys as xs, at least one")
        if any(b <= a for a, b in zip(self.xs, self.xs[1:])):
            raise ValueError(f"breakpoint xs must be strictly increasing, got {self.xs}")

    @classmethod
    def through_medians(cls, points: Sequence[tuple[float, float]]) -> "Breakpoints":
        """Median y per distinct x."""
        by_x: dict[float, list[float]] = {}
        for x, y in points:
            by_x.setdefault(float(x), []).append(float(y))
        xs = sorted(by_x)
        return cls(tuple(xs), tuple(float(np.median(by_x[x])) for x in xs))

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0] * (x / xs[0] if xs[0] else 1.0)
        i = min(max(bisect.bisect_right(xs, x), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))

    def to_dict(self) -> dict:
        return {"xs": list(self.xs), "ys": list(self.ys)}

    @classmethod
    def from_dict(cls, d: dict) -> "Breakpoints":
        return cls(tuple(float(x) for x in d["xs"]), tuple(float(y) for y in d["ys"]))
