"""Cache-Craft reuse planning: which stored variant of a chunk to reuse and how much of it to fix.

For a chunk C_i stored after chunks S_old and now placed after S_new (notation of the notes,
eq. numbers of the paper):

- prefix overlap (eq. 6) beta = sum of inter(C_i, C_j) over C_j in both / over S_old (1 when S_old
  carries no attention); order penalty (eq. 7) gamma = normalised Kendall-tau distance between the
  orders of the chunks common to both (0 below two); beta' = beta * (1 - gamma) (eq. 8);
- context impact (eq. 11) CCI = sigmoid(a / b), a = sum over S_old of inter / (|C_i| |C_j|),
  b = intra / |C_i|^2 (CCI = 0.5 when a = 0);
- fix overhead (eq. 12) CFO = clamp(alpha * CCI * (1 - beta'), 0, 1): the fraction to recompute.

A variant computed after exactly the same tokens at the same position needs nothing (fraction
0). Otherwise the fraction is max(min_fraction, CFO): `min_fraction` (CacheBlend's r) covers what
Cache-Craft's scores cannot see, the new context's attention into a chunk computed without it.
Retention (which variant to drop past M) ranks by expected reuse x saving: (1 + hits) x tokens x
(2 - 2 CCI), i.e. variants that are used often and need little fixing stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from splitserve.chunkcache.variants import ChunkStats, VariantMeta


@dataclass(frozen=True)
class CacheCraftConfig:
    alpha: float = 1.0
    min_fraction: float = 0.15
    max_variants: int = 5
    # among variants not computed in this very context, take the one that saw most of the chunks now before it
    # (context_coverage) rather than the least fix: a variant computed alone has CFO 0 (nothing to lose), so by fix
    # it always wins over the live variants computed in real prompts, whose KV is far closer (SmolLM2 / MuSiQue,
    # 46 questions: Cache-Craft ROUGE-L vs full 0.830 vs 0.698, +0.132 [+0.076, +0.198], at 0.43 vs 0.18 rows; README)
    prefer_context: bool = True

    def __post_init__(self):
        if self.alpha < 0 or not 0.0 <= self.min_fraction <= 1.0 or self.max_variants < 1:
            raise ValueError("alpha must be >= 0, min_fraction in [0, 1], max_variants >= 1")


@dataclass(frozen=True)
class ChunkContext:
    """Where a chunk sits in the new request."""
    start: int
    prefix_hash: str  # of all tokens before it
    prefix_keys: tuple[str, ...]  # chunk hashes before it, in order


@dataclass(frozen=True)
class Plan:
    variant: VariantMeta
    fraction: float  # of the chunk's rows to recompute
    cfo: float


def prefix_overlap(stats: ChunkStats, new_prefix: tuple[str, ...]) -> float:
    total = sum(stats.inter)
    if total <= 0:
        return 1.0
    keep = set(new_prefix)
    return sum(w for key, w in zip(stats.prefix_keys, stats.inter) if key in keep) / total


def order_penalty(old_prefix: tuple[str, ...], new_prefix: tuple[str, ...]) -> float:
    new_rank = {key: i for i, key in reversed(list(enumerate(new_prefix)))}
    common = [new_rank[key] for key in dict.fromkeys(old_prefix) if key in new_rank]
    m = len(common)
    if m < 2:
        return 0.0
    discordant = sum(1 for i in range(m) for j in range(i + 1, m) if common[i] > common[j])
    return discordant / (m * (m - 1) / 2)


def context_impact(stats: ChunkStats, num_tokens: int) -> float:
    a = sum(w / (num_tokens * length) for w, length in zip(stats.inter, stats.prefix_lengths) if length)
    b = stats.intra / (num_tokens * num_tokens) if num_tokens else 0.0
    if a <= 0:
        return 0.5
    if b <= 0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-a / b))


def fix_overhead(alpha: float, cci: float, beta_prime: float) -> float:
    return min(1.0, max(0.0, alpha * cci * (1.0 - beta_prime)))


def plan_variant(meta: VariantMeta, ctx: ChunkContext, cfg: CacheCraftConfig) -> Plan:
    if meta.prefix_hash == ctx.prefix_hash and meta.start == ctx.start:
        return Plan(meta, 0.0, 0.0)
    beta = prefix_overlap(meta.stats, ctx.prefix_keys)
    gamma = order_penalty(meta.stats.prefix_keys, ctx.prefix_keys)
    cfo = fix_overhead(cfg.alpha, context_impact(meta.stats, meta.num_tokens), beta * (1.0 - gamma))
    return Plan(meta, max(cfg.min_fraction, cfo), cfo)


def context_coverage(stats: ChunkStats, new_prefix: tuple[str, ...]) -> int:
    """Tokens of the chunks now before the chunk that were also before it when the variant was computed."""
    keep = set(new_prefix)
    return sum(n for key, n in zip(stats.prefix_keys, stats.prefix_lengths) if key in keep)


def choose_variant(variants: list[VariantMeta], ctx: ChunkContext, cfg: CacheCraftConfig) -> Plan | None:
    """The stored variant needing the least recompute (prefer_context: an exact one, else the one that saw most of
    the current preceding chunks); None when there is none (a miss)."""
    plans = [plan_variant(v, ctx, cfg) for v in variants]

    def rank(p: Plan) -> tuple:
        fix = (p.fraction, p.cfo, abs(p.variant.start - ctx.start))
        if not cfg.prefer_context:
            return fix
        return (p.fraction > 0, -context_coverage(p.variant.stats, ctx.prefix_keys), *fix)
    return min(plans, key=rank, default=None)


def retention_value(meta: VariantMeta, hits: int) -> float:
    return (1 + hits) * meta.num_tokens * (2.0 - 2.0 * context_impact(meta.stats, meta.num_tokens))


def variants_to_evict(variants: list[VariantMeta], hits: dict[str, int], max_variants: int) -> list[VariantMeta]:
    ranked = sorted(variants, key=lambda v: retention_value(v, hits.get(v.variant_id, 0)), reverse=True)
    return ranked[max_variants:]
