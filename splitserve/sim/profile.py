"""A node profile: what one engine step and one KV transfer cost on a machine, and how much
KV the node holds. Written by `splitserve profile`, read by `simulate` and `plan`.

Step time model (one engine step, whatever mix of prefill chunks and decodes it holds):

    step_s = c0 + c1*T + sum_k q_k*max(0, T - knot_k) + c_seq*S + c_attn*A + c_ctx*C + c_mask*M + c_one*[T=1]

T: tokens computed in the step; S: sequences in it; A: prefill attention work, sum over its
prompt chunks of new_tokens * context_after_the_chunk (query-key pairs); C: decode attention
work, the summed context of its one-token chunks (keys gathered from the paged cache); M: the
part of A in chunks that continue a context (a later chunk of a long prompt, or one after a
cached prefix). The engine attends a fresh prompt with SDPA's causal kernel but a continuing
chunk with an explicit mask over gathered keys (engine/attention.py), several times dearer per
query-key pair here; with one attention term the chunked points made fresh prompts' attention
look dear, and a step of two 512-token prompts was predicted 18% short (730 vs 890 ms).
Profiles written before M existed have no c_mask (read as 0). [T=1] is 1 for a step of one token
(a lone decode): with one torch thread the engine runs such a step's linears as matrix-vector
products (cpu_linear.py), much cheaper than its packed path for two rows or more. Without the
term the fit put a batch of 1 and a batch of 2-4 on one line: the nodes' step logs of validation
run 7 read batch 1 at 0.81x the fit and batches 2 to 4 at 1.14-1.28x, and a calibration made
with lone requests carried batch 1's error into every batched step. With it they read 0.81-0.89x
alike. Profiles written before it have no c_one (read as 0).

The hinge terms follow the linear layers' cost in T; fitted by least squares (relative error) on
the measured prefill and decode steps (fit.py). With `row_buckets` (an engine whose linears are
cpu_linear.py's packed ones) the token terms take the rows the engine computes for T
(`computed_rows`: padded exact to 16, then to multiples of 16 to 256, then of 128, except that up
to 64 rows past a multiple of 128 run as a second call): a 600-token step runs its linears on 640
rows, as slow as a 640-token one; a 513-token step on 512 + 1 (the second call's extra weight read
is not modelled). Transfer time per backend: bytes -> seconds through the measured medians.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splitserve.rowcounts import bucket_rows, computed_rows  # noqa: F401 (bucket_rows re-exported)
from splitserve.sim.fit import Breakpoints, hinge_features, least_squares

PROFILE_VERSION = 1
DEFAULT_KNOTS = (32.0, 128.0, 512.0)


@dataclass(frozen=True)
class StepPoint:
    """One measured engine step."""

    num_tokens: int
    num_seqs: int
    attention: float  # prompt chunks: sum of new_tokens * context_after
    seconds: float
    kind: str = "prefill"  # or "decode"
    decode_context: float = 0.0  # one-token chunks: sum of their context
    masked_attention: float = 0.0  # the part of `attention` in chunks that continue a context


@dataclass(frozen=True)
class StepModel:
    knots: tuple[float, ...]
    coef: tuple[float, ...]  # c0, c1, q_k..., c_seq, c_attn, c_ctx, c_mask, c_one (older profiles: without
    # c_one, or without both)
    min_step_s: float = 1e-5
    row_buckets: bool = False  # the token terms take computed_rows(T) (packed CPU linears pad their rows)

    def __post_init__(self):
        k = len(self.knots)
        if len(self.coef) not in (k + 5, k + 6, k + 7):
            raise ValueError(f"a step model with {k} knots has {k + 7} coefficients ({k + 6} without c_one, "
                             f"{k + 5} without c_mask either), got {len(self.coef)}")
        c = (*self.coef, *(0.0,) * (k + 7 - len(self.coef)))
        # unpacked once: seconds() runs millions of times in a large simulation
        object.__setattr__(self, "_linear", (c[0], c[1], c[-5], c[-4], c[-3], c[-2]))
        object.__setattr__(self, "_one_row", c[-1])
        object.__setattr__(self, "_hinges", tuple(zip(c[2:-5], self.knots)))

    @classmethod
    def fit(cls, points: list[StepPoint], knots: tuple[float, ...] = DEFAULT_KNOTS,
            row_buckets: bool = False) -> "StepModel":
        rows = [computed_rows(p.num_tokens) if row_buckets else p.num_tokens for p in points]
        knots = tuple(k for k in knots if k < max(rows))
        tokens = np.array(rows, dtype=float)
        extra = np.array([[p.num_seqs, p.attention, p.decode_context, p.masked_attention, float(p.num_tokens == 1)]
                          for p in points], dtype=float)
        design = np.concatenate([hinge_features(tokens, knots), extra], axis=1)
        coef = least_squares(design, np.array([p.seconds for p in points]))
        return cls(knots, tuple(float(c) for c in coef), min(p.seconds for p in points) / 2, row_buckets)

    def seconds(self, num_tokens: int, num_seqs: int, attention: float, decode_context: float = 0.0,
                masked_attention: float = 0.0) -> float:
        c0, c1, c_seq, c_attn, c_ctx, c_mask = self._linear
        if num_tokens == 1:
            c0 += self._one_row
        elif self.row_buckets and num_tokens > 16:
            num_tokens = computed_rows(num_tokens)
        t = c0 + c1 * num_tokens + c_seq * num_seqs + c_attn * attention + c_ctx * decode_context + \
            c_mask * masked_attention
        for q, k in self._hinges:
            if num_tokens > k:
                t += q * (num_tokens - k)
        return t if t > self.min_step_s else self.min_step_s

    def prefill_s(self, num_tokens: int, start: int = 0) -> float:
        """One chunk of one sequence: tokens [start, start + num_tokens)."""
        attention = num_tokens * (start + num_tokens)
        return self.seconds(num_tokens, 1, attention, 0.0, attention if start else 0.0)

    def decode_s(self, batch: int, context: int) -> float:
        """One decode step of `batch` sequences holding `context` tokens each."""
        return self.seconds(batch, batch, 0.0, batch * (context + 1))

    def to_dict(self) -> dict:
        return {"knots": list(self.knots), "coef": list(self.coef), "min_step_s": self.min_step_s,
                "row_buckets": self.row_buckets}

    @classmethod
    def from_dict(cls, d: dict) -> "StepModel":
        return cls(tuple(d["knots"]), tuple(d["coef"]), d.get("min_step_s", 1e-5), d.get("row_buckets", False))


@dataclass(frozen=True)
class EngineShape:
    """The engine settings a profile was measured for: the node's flags (defaults in node/cli.py) and
    the model's KV layout. No defaults here: `splitserve profile` fills every field."""

    block_size: int
    num_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_bytes_per_token: int
    num_layers: int
    one_shot_max_tokens: int
    # tokens the router's encode adds to every text prompt (a BOS): the engine computes them, the
    # client does not count them. 0 in profiles taken before it was recorded.
    prompt_special_tokens: int = 0

    def __post_init__(self):
        if self.prompt_special_tokens < 0:
            raise ValueError(f"prompt_special_tokens must be >= 0, got {self.prompt_special_tokens}")
        for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens", "kv_bytes_per_token",
                     "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


@dataclass(frozen=True)
class Profile:
    step: StepModel
    engine: EngineShape
    transfer: dict[str, Breakpoints]  # backend -> (bytes -> seconds)
    meta: dict = field(default_factory=dict)  # model, host, threads, date
    points: dict = field(default_factory=dict)  # raw measurements
    host: dict = field(default_factory=dict)  # {"corun": {"cores", "threads", "stretch": [...], ...}} (host.py)

    def __post_init__(self):
        if not self.transfer:
            raise ValueError("a profile needs the transfer time of at least one backend")

    def transfer_s(self, backend: str, num_bytes: float) -> float:
        try:
            return self.transfer[backend](num_bytes)
        except KeyError:
            raise KeyError(f"the profile has no transfer backend {backend!r}; it has: "
                           f"{', '.join(sorted(self.transfer))}") from None

    def to_dict(self) -> dict:
        return {"version": PROFILE_VERSION, "meta": self.meta, "engine": vars(self.engine),
                "kv_capacity_tokens": self.engine.kv_capacity_tokens, "step": self.step.to_dict(),
                "transfer": {k: v.to_dict() for k, v in self.transfer.items()}, "points": self.points,
                **({"host": self.host} if self.host else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {d.get('version')!r} is not {PROFILE_VERSION}")
        return cls(StepModel.from_dict(d["step"]), EngineShape(**d["engine"]),
                   {k: Breakpoints.from_dict(v) for k, v in d["transfer"].items()}, d.get("meta", {}),
                   d.get("points", {}), d.get("host", {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no profile at {path} (make one with `splitserve profile --model DIR --out {path}`)")
    try:
        return Profile.from_dict(json.loads(path.read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a splitserve profile ({e!r})") from None
