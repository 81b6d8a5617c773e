"""CacheBlend's blended prefill against the engine's own full prefill (fp32, tiny model)."""

from __future__ import annotations

import pytest
import torch

from splitserve.chunkcache.blend import BlendConfig, blended_prefill
from splitserve.chunkcache.chunk_forward import full_forward
from splitserve.chunkcache.format import ChunkKV
from splitserve.chunkcache.reuse import PlacedChunk, place_chunks
from splitserve.chunkcache.rope import RopeShifter
from splitserve.engine.loader import load_model
from tests.support.chunkcache import reference_prefill

N, SPANS = 40, [(1, 12), (12, 26), (26, 33)]  # three chunks after a BOS row, then a 7-token question


@pytest.fixture(scope="module")
def model(tiny_model):
    torch.manual_seed(0)
    return load_model(tiny_model, torch.float32, "cpu")


@pytest.fixture(scope="module")
def ids(model):
    return torch.randint(1, model.cfg.vocab_size, (N,), generator=torch.Generator().manual_seed(1))


def _chunks_alone(model, ids):
    """Each chunk computed after the BOS row only (at positions 1..len), as ingest stores it."""
    placed = []
    for s, e in SPANS:
        out = full_forward(model, torch.cat([ids[:1], ids[s:e]]))
        placed.append(PlacedChunk(s, ChunkKV(out.k[:, 1:], out.v[:, 1:], torch.arange(1, 1 + e - s))))
    return placed


def _reused(model, placed, n=N):
    cfg = model.cfg
    return place_chunks(placed, n, RopeShifter.for_model(cfg), (cfg.num_kv_heads, cfg.head_dim), torch.float32)


def _run(model, ids, cfg, placed=None, **kw):
    layers = {}
    reused = _reused(model, _chunks_alone(model, ids) if placed is None else placed)
    res = blended_prefill(model, ids, reused, cfg, on_layer=lambda i, k, v: layers.update({i: (k.clone(), v.clone())}),
                          **kw)
    k = torch.stack([layers[i][0] for i in range(len(layers))])
    v = torch.stack([layers[i][1] for i in range(len(layers))])
    return res, k, v


def test_ratio_one_equals_full_prefill(model, ids):
    k_ref, v_ref, logits_ref = reference_prefill(model, ids)
    res, k, v = _run(model, ids, BlendConfig((1,), (1.0,)))
    torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(v, v_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.logits, logits_ref, atol=1e-4, rtol=0)
    assert res.active_rows == [N] * model.cfg.num_layers


def test_direct_reuse_equals_rope_shifted_chunk_kv(model, ids):
    placed = _chunks_alone(model, ids)
    res, k, v = _run(model, ids, BlendConfig((0,), (0.0,)), placed)
    shifter = RopeShifter.for_model(model.cfg)
    for c in placed:
        rows = torch.arange(c.start, c.start + c.kv.num_tokens)
        for layer in range(model.cfg.num_layers):
            torch.testing.assert_close(k[layer, rows], shifter.shift(c.kv.k[layer], c.kv.positions, rows), atol=0, rtol=0)
            assert torch.equal(v[layer, rows], c.kv.v[layer])
    k_ref, v_ref, _ = reference_prefill(model, ids)  # layer 0 sees only token and position: reuse is exact there
    torch.testing.assert_close(k[0], k_ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(v[0], v_ref[0], atol=1e-5, rtol=0)
    forced = N - sum(c.kv.num_tokens for c in placed)  # BOS, the question (incl. the last token)
    assert res.active_rows == [forced] * model.cfg.num_layers


def test_first_chunk_after_same_prefix_has_no_deviation(model, ids):
    placed = _chunks_alone(model, ids)[:1]  # computed after BOS at positions 1.., exactly as in the prompt
    k_ref, v_ref, _ = reference_prefill(model, ids)
    torch.testing.assert_close(placed[0].kv.k, k_ref[:, 1:12], atol=1e-5, rtol=0)
    res, k, _ = _run(model, ids, BlendConfig((1,), (0.15,)), placed)
    torch.testing.assert_close(k[:, 1:12], k_ref[:, 1:12], atol=1e-5, rtol=0)


def test_persisted_kv_is_the_kv_attention_used(model, ids):
    """Re-running the last token over the persisted K/V gives the blend's own logits."""
    res, k, v = _run(model, ids, BlendConfig((1,), (0.15,)))
    cfg, n = model.cfg, N
    from splitserve.engine.attention import AttentionBatch, PagedKVCache, PrefillChunk

    cache = PagedKVCache(cfg.num_layers, n, 1, cfg.num_kv_heads, cfg.head_dim, torch.float32)
    for layer in range(cfg.num_layers):
        cache.write(layer, torch.arange(n - 1), k[layer, :n - 1], v[layer, :n - 1])
    mask = torch.ones(1, n, dtype=torch.bool)
    batch = AttentionBatch(torch.tensor([n - 1]), 0, None, None, [PrefillChunk(0, 1, torch.arange(n), mask)])
    logits = model(ids[n - 1:], torch.tensor([n - 1]), cache, batch, torch.tensor([0]))[0]
    torch.testing.assert_close(logits, res.logits, atol=1e-4, rtol=0)
    assert res.selected.tolist() == sorted(set(res.selected.tolist()))


def test_error_falls_with_ratio(model, ids):
    k_ref, _, logits_ref = reference_prefill(model, ids)
    errs = []
    for r in (0.0, 0.3, 1.0):
        _, k, _ = _run(model, ids, BlendConfig((1,), (r,)))
        errs.append(float((k - k_ref).norm() / k_ref.norm()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5


def test_gradual_filtering_counts(small_model):
    model = load_model(small_model, torch.float32, "cpu")  # 8 layers
    ids = torch.randint(1, model.cfg.vocab_size, (N,), generator=torch.Generator().manual_seed(2))
    res, _, _ = _run(model, ids, BlendConfig((1, 2, 3), (0.6, 0.4, 0.2)))
    forced = 8  # BOS and the 7-token question; 32 cached rows
    assert res.active_rows == [N, 19 + forced, 12 + forced] + [6 + forced] * 5
    with pytest.raises(ValueError):
        BlendConfig((1, 2), (0.1, 0.3))  # ratios must not grow


def test_config_validation():
    with pytest.raises(ValueError):
        BlendConfig((2, 1), (0.2, 0.1))
    with pytest.raises(ValueError):
        BlendConfig((1,), (1.5,))


def test_attention_in_row_blocks_equals_one_block(model):
    from splitserve.chunkcache.blend import _attend

    attn, g = model.layers[0].self_attn, torch.Generator().manual_seed(3)
    k = torch.randn(30, attn.num_kv_heads, attn.head_dim, generator=g)
    v = torch.randn(30, attn.num_kv_heads, attn.head_dim, generator=g)
    for rows in (torch.arange(30), torch.tensor([0, 4, 5, 17, 22, 29])):
        q = torch.randn(len(rows), attn.num_heads, attn.head_dim, generator=g)
        causal = len(rows) == 30
        torch.testing.assert_close(_attend(attn, q, k, v, rows, causal, block=4),
                                   _attend(attn, q, k, v, rows, causal, block=1024), atol=1e-5, rtol=0)


def test_lead_rows_of_every_chunk_are_recomputed(model, ids):
    res, _, _ = _run(model, ids, BlendConfig((0,), (0.0,), lead_rows=3))
    selected = set(res.selected.tolist())
    assert all({s, s + 1, s + 2} <= selected for s, _ in SPANS)
    forced = N - sum(e - s for s, e in SPANS)  # BOS and the question
    assert res.active_rows == [forced + 3 * len(SPANS)] * model.cfg.num_layers
    with pytest.raises(ValueError, match="lead_rows"):
        BlendConfig(lead_rows=-1)


@pytest.mark.parametrize("deviation", ["v", "k_rel", "attn", "k_attn", "v_attn"])
def test_other_deviations_keep_counts_and_full_prefill(model, ids, deviation):
    """The same count of rows by V or relative K deviation; at ratio 1 each is a full prefill."""
    k_res, _, _ = _run(model, ids, BlendConfig((1,), (0.3,), deviation="k"))
    other, _, _ = _run(model, ids, BlendConfig((1,), (0.3,), deviation=deviation))
    assert k_res.active_rows == other.active_rows
    _, _, logits_ref = reference_prefill(model, ids)
    torch.testing.assert_close(_run(model, ids, BlendConfig((1,), (1.0,), deviation=deviation))[0].logits, logits_ref,
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="deviation"):
        BlendConfig(deviation="q")


def test_relative_k_deviation_ranks_by_change_over_norm():
    from splitserve.chunkcache.blend import _deviation

    k_old = torch.tensor([[[10.0, 0.0]], [[0.1, 0.0]], [[1.0, 0.0]]])  # [3 rows, 1 head, 2]
    k = k_old + torch.tensor([[[1.0, 0.0]], [[0.1, 0.0]], [[0.0, 0.0]]])
    assert _deviation(k, k_old, None).argmax() == 0  # absolute: the large-norm row
    torch.testing.assert_close(_deviation(k, k_old, None, relative=True), torch.tensor([0.01, 1.0, 0.0]))



def test_attention_selection_picks_the_rows_the_query_attends_to_most(model, ids):
    """deviation="attn": the cached rows recomputed are those with the most layer-1 attention (softmax, summed over
    heads and query rows) from the forced rows (BOS, the question); "k_attn" ranks by K deviation x that weight."""
    from splitserve.chunkcache.blend import _attend, _finish, _qkv

    rows, forced = torch.arange(N), torch.tensor([0, *range(SPANS[-1][1], N)])
    cached = torch.tensor([r for s, e in SPANS for r in range(s, e)])
    count = int(0.3 * cached.numel())
    with torch.inference_mode():
        layer0, layer1 = model.layers[0], model.layers[1]
        q, k, v = _qkv(layer0, model.rotary, model.embed_tokens(ids), rows)
        h1 = _finish(layer0, model.embed_tokens(ids), _attend(layer0.self_attn, q, k, v, rows, True))
        q, k, _ = _qkv(layer1, model.rotary, h1, rows)
    attn = layer1.self_attn
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)
    scores = torch.einsum("fhd,ahd->hfa", q[forced], k) * attn.scale
    received = scores.masked_fill(rows[None, None, :] > forced[None, :, None], float("-inf")).softmax(-1).sum((0, 1))
    expected = set(cached[received[cached].topk(count).indices].tolist())
    res, _, _ = _run(model, ids, BlendConfig((1,), (0.3,), deviation="attn"))
    assert set(res.selected.tolist()) - set(forced.tolist()) == expected
    k_dev, _, _ = _run(model, ids, BlendConfig((1,), (0.3,), deviation="k"))
    assert set(k_dev.selected.tolist()) != set(res.selected.tolist())  # not K deviation under another name
    reused_k = _reused(model, _chunks_alone(model, ids)).layer(1)[0]
    dev = (k[:, ::attn.num_heads // attn.num_kv_heads] - reused_k).pow(2).sum(dim=(1, 2))
    both = set(cached[(dev * received)[cached].topk(count).indices].tolist())
    res, _, _ = _run(model, ids, BlendConfig((1,), (0.3,), deviation="k_attn"))
    assert set(res.selected.tolist()) - set(forced.tolist()) == both


def test_check_layer_past_the_last_layer_runs_at_the_last(model, ids):
    """The default check layer 2 on this 2-layer model is check layer 1 (not a silent full prefill)."""
    assert BlendConfig().check_layers == (2,) and model.cfg.num_layers == 2
    at_one, k1, v1 = _run(model, ids, BlendConfig((1,), (0.15,)))
    at_two, k2, v2 = _run(model, ids, BlendConfig((2,), (0.15,)))
    assert at_two.active_rows == at_one.active_rows and torch.equal(at_two.selected, at_one.selected)
    assert torch.equal(k2, k1) and torch.equal(v2, v1)


def test_reused_k_scale_scales_only_the_reused_rows(model, ids):
    plain, k, v = _run(model, ids, BlendConfig((1,), (0.15,)))
    scaled, k_s, v_s = _run(model, ids, BlendConfig((1,), (0.15,), reused_k_scale=1.1))
    assert torch.equal(scaled.selected, plain.selected)  # rows are chosen before the scale applies
    reused = torch.ones(N, dtype=torch.bool)
    reused[plain.selected] = False
    torch.testing.assert_close(k_s[1, reused], 1.1 * k[1, reused], atol=1e-6, rtol=0)
    assert torch.equal(k_s[0], k[0]) and torch.equal(v_s[1, reused], v[1, reused])
    assert not torch.equal(scaled.logits, plain.logits)
    with pytest.raises(ValueError, match="reused_k_scale"):
        BlendConfig(reused_k_scale=0.0)
