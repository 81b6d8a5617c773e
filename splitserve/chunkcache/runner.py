"""ChunkCache: a request's chunk-cache life on a node, minus the network.

1. `plan()` (any thread; Redis I/O): key each chunk span, read the variants every tier holds,
   choose one per chunk (Cache-Craft) and fetch its KV (from Redis layer by layer, arriving while
   the blend computes, with `layerwise_load`). Chunks found nowhere are misses. The plan also
   names the chunks to record as live variants (live.py: used here in a context not stored yet).
2. `blend()` (engine thread, between steps): reserve KV blocks for the prompt, place the reused
   chunks at their positions, run the blended prefill writing each layer's K/V into the blocks
   (and handing the layer to `on_layer`, which streams it to a decode node), sample the first
   token. The caller then admits the request for decoding (mixed node) or sends and releases.
3. `compute_alone()` / `compute_in_context()` / `record()` (engine thread, off the request path):
   a chunk's KV and attention statistics, computed the plain way, for `store.put` (after a miss,
   on ingest, or as the request's own context: a live variant). The `*_steps` forms are generators,
   one layer per step, for EngineLoop.background (requests arriving meanwhile go first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitserve.chunkcache.blend import BlendConfig, blended_prefill
from splitserve.chunkcache.cachecraft import CacheCraftConfig, ChunkContext, choose_variant
from splitserve.chunkcache.documents import document_head
from splitserve.chunkcache.format import ChunkKV, CorruptValue
from splitserve.chunkcache.keys import content_hash, prefix_hash, salted_key
from splitserve.chunkcache.layer_fetch import LayerwiseFetch
from splitserve.chunkcache.chunk_forward import drain
from splitserve.chunkcache.live import is_exact, record_targets, variants_in_prompt_steps
from splitserve.chunkcache.reuse import PlacedChunk, place_chunks
from splitserve.chunkcache.rope import RopeShifter
from splitserve.chunkcache.selection import ChunkBudget
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import EVICTIONS
from splitserve.chunkcache.variants import VariantMeta
from splitserve.engine.request import penalty_history
from splitserve.engine.sampler import Sample, SampleRequest, sample
from splitserve.engine.token_limits import banned_tokens, next_token_mask
from splitserve.redis_pipe import TierUnavailable

PLANNINGS = ("cachecraft", "ratio")


@dataclass(frozen=True)
class ChunkCacheConfig:
    blend: BlendConfig = field(default_factory=BlendConfig)
    craft: CacheCraftConfig = field(default_factory=CacheCraftConfig)
    planning: str = "cachecraft"  # per-chunk budgets (Cache-Craft) or one ratio for all rows (CacheBlend)
    live_variants: int = 4  # variants recorded from requests per chunk; 0: misses stored computed alone
    eviction: str = "score"  # local tier: Cache-Craft's reuse x saving, or "lru"
    layerwise_load: bool = True  # Redis values read layer by layer while the blend computes

    def __post_init__(self):
        if self.planning not in PLANNINGS:
            raise ValueError(f"planning must be one of {', '.join(PLANNINGS)}, got {self.planning!r}")
        if self.live_variants < 0:
            raise ValueError(f"live_variants must be >= 0, got {self.live_variants}")
        if self.eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {self.eviction!r}")


@dataclass
class RequestPlan:
    keys: list[str]
    placed: list[PlacedChunk] = field(default_factory=list)
    budgets: list[ChunkBudget] = field(default_factory=list)
    misses: list[int] = field(default_factory=list)  # indices of spans found in no tier
    record: list[int] = field(default_factory=list)  # indices of spans to record as live variants
    exact: int = 0  # chunks reused from a variant computed in this very context
    loading: LayerwiseFetch | None = None  # Redis values still arriving layer by layer

    @property
    def num_reused_tokens(self) -> int:
        return sum(p.kv.num_tokens for p in self.placed)


@dataclass
class BlendOutcome:
    sample: Sample
    finish_reason: str | None  # the first token already ends the request: "stop" | "length"
    computed_rows: float
    time_s: float
    logits: torch.Tensor | None = None  # [vocab] fp32 after the last prompt row


class ChunkCache:
    def __init__(self, engine, store: ChunkStore, config: ChunkCacheConfig | None = None,
                 prefix: list[int] | None = None):
        """prefix: what ingested chunks are computed after (default documents.document_head: the chat
        template's head before a chat request's documents, else the special prefix, e.g. BOS)."""
        self.engine, self.store = engine, store
        self.config = config or ChunkCacheConfig()
        self.shifter = RopeShifter.for_model(engine.model_config)
        self.prefix = document_head(engine.tokenizer) if prefix is None else list(prefix)

    def plan(self, prompt: list[int], spans: list[tuple[int, int]], salt: str | None = None) -> RequestPlan:
        """`salt`: the request's cache salt; its chunks are looked up (and later stored) under salted keys."""
        keys = [salted_key(content_hash(prompt[s:s + n]), salt) for s, n in spans]
        found = self.store.variants(list(dict.fromkeys(keys)))
        held = [found.get(key, []) for key in keys]
        contexts = [ChunkContext(s, prefix_hash(prompt[:s]), tuple(keys[:i])) for i, (s, _) in enumerate(spans)]
        plans = [choose_variant(h, ctx, self.config.craft) for h, ctx in zip(held, contexts)]
        chosen = [p.variant for p in plans if p is not None]
        fetched, loading = self.store.fetch_layerwise(chosen) if self.config.layerwise_load \
            else (self.store.fetch(chosen), None)
        self.store.metrics.add(misses=sum(p is None for p in plans))  # known to no tier
        out = RequestPlan(keys, record=record_targets(held, contexts, self.config.live_variants), loading=loading)
        for i, ((start, n), p, ctx) in enumerate(zip(spans, plans, contexts)):
            kv = fetched.get((keys[i], p.variant.variant_id)) if p is not None else None
            if kv is None or kv.num_tokens != n:
                out.misses.append(i)
                continue
            out.placed.append(PlacedChunk(start, kv))
            out.budgets.append(ChunkBudget(start, start + n, p.fraction))
            out.exact += is_exact(p.variant, ctx)
        self.store.metrics.add(exact_hits=out.exact)
        return out

    def blend(self, engine, rid: str, prompt: list[int], plan: RequestPlan, params, prior: int,
              on_layer=None) -> BlendOutcome | None:
        """Engine thread. None when blending cannot run here (no free blocks, sliding window, a Redis
        value that failed its checksum or went away while it was read: deleted, counted, a miss).
        on_layer(l, slots) is held back until every Redis value is in and verified."""
        n, cfg = len(prompt), engine.model_config
        if cfg.sliding_window is not None and n > cfg.sliding_window:
            return None
        block_ids = engine.reserve(rid, n)
        if block_ids is None:
            return None
        try:
            slots = engine.kv_slots(block_ids, n)
            held: list[int] = []

            def release(layers: list[int]) -> None:
                for layer in layers:
                    on_layer(layer, slots)
                layers.clear()

            def sink(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
                engine.cache.write(layer, slots, k, v)
                if on_layer is not None:
                    held.append(layer)
                    if _loaded(plan.loading, block=False):
                        release(held)
            result = self._blend(engine, prompt, plan, sink)
            _loaded(plan.loading, block=True)
            if on_layer is not None:
                release(held)
            history = penalty_history(prompt, [], prior)
            banned = banned_tokens(params, prior, engine.tokenizer.eos_token_ids, history[1])
            request = SampleRequest(params, prior, banned, *history, allowed=_first_token_mask(engine, params, history[1]))
            first = sample(result.logits[None].clone(), [request], engine.runner.generator)[0]
        except (CorruptValue, TierUnavailable) as exc:
            engine.cancel_reservation(rid)
            corrupt = isinstance(exc, CorruptValue)
            self.store.metrics.add(corrupt_values=int(corrupt), redis_errors=int(not corrupt))
            return None
        except BaseException:
            engine.cancel_reservation(rid)
            raise
        self.store.metrics.add(blended_requests=1, blend_time_s=result.time_s, prompt_rows=n,
                               recomputed_rows=result.computed_rows)
        return BlendOutcome(first, _finish_reason(first.token_id, params, engine.tokenizer.eos_token_ids, prior),
                            result.computed_rows, result.time_s, result.logits)

    def _blend(self, engine, prompt: list[int], plan: RequestPlan, sink):
        cfg, device, dtype = engine.model_config, engine.config.device, engine.config.torch_dtype
        reused = place_chunks(plan.placed, len(prompt), self.shifter, (cfg.num_kv_heads, cfg.head_dim), dtype, device)
        budgets = plan.budgets if self.config.planning == "cachecraft" else None
        ids = torch.tensor(prompt, dtype=torch.long, device=device)
        return blended_prefill(engine.model, ids, reused, self.config.blend, budgets, sink)

    def compute_alone(self, engine, chunk_ids: list[int], prefix: list[int] | None = None) -> tuple[VariantMeta, ChunkKV]:
        """Engine thread: the chunk after `prefix` only (default self.prefix: where a first document sits)."""
        return self.compute_in_context(engine, [chunk_ids], prefix)[0]

    def compute_in_context(self, engine, chunks: list[list[int]],
                           prefix: list[int] | None = None) -> list[tuple[VariantMeta, ChunkKV]]:
        """Engine thread: the chunks one after another; each is stored as computed after those before it."""
        return drain(self.compute_in_context_steps(engine, chunks, prefix))

    def compute_in_context_steps(self, engine, chunks: list[list[int]], prefix: list[int] | None = None,
                                 keys: list[str] | None = None):
        """compute_in_context one layer per step (a generator: EngineLoop.background); `keys`: what the chunks are
        stored under (default their content hashes; a salted request's are salted)."""
        tokens, spans = list(self.prefix if prefix is None else prefix), []
        for chunk in chunks:
            spans.append((len(tokens), len(chunk)))
            tokens += chunk
        keys = keys or [content_hash(c) for c in chunks]
        return (yield from variants_in_prompt_steps(engine.model, tokens, spans, keys, list(range(len(chunks))),
                                                    engine.config.device))

    def record(self, engine, prompt: list[int], spans: list[tuple[int, int]], keys: list[str],
               targets: list[int]) -> list[tuple[VariantMeta, ChunkKV]]:
        """Engine thread: the target chunks as computed in this prompt (live variants, live.py)."""
        return drain(self.record_steps(engine, prompt, spans, keys, targets))

    def record_steps(self, engine, prompt: list[int], spans: list[tuple[int, int]], keys: list[str],
                     targets: list[int]):
        """record one layer per step (a generator: EngineLoop.background)."""
        entries = yield from variants_in_prompt_steps(engine.model, prompt, spans, keys, targets, engine.config.device)
        self.store.metrics.add(recorded_variants=len(entries),
                               recorded_tokens=max((m.start + m.num_tokens for m, _ in entries), default=0))
        return entries


def _loaded(loading: LayerwiseFetch | None, block: bool) -> bool:
    """Every Redis value in and verified (raises the fetch's error); False if still arriving and not block."""
    if loading is None:
        return True
    if not block and not loading.done:
        return False
    loading.wait()
    return True


def _first_token_mask(engine, params, output_token_ids: list[int]) -> torch.Tensor | None:
    """The first token's mask under the request's grammar (the engine's own matcher replays it at admission)
    and its allowed_token_ids."""
    matcher = engine.matcher(params, output_token_ids)
    return next_token_mask(params, matcher, engine.model_config.vocab_size, engine.config.device)


def _finish_reason(token: int, params, eos_ids, prior: int) -> str | None:
    if token in params.stop_token_ids or (not params.ignore_eos and token in eos_ids):
        return "stop"
    return "length" if prior + 1 >= params.max_tokens else None

