"""Attention of a chunk that continues a context (masked SDPA over gathered keys) has its own
term in the step model (profile.py): it costs several times the causal kernel's per pair."""

from __future__ import annotations

import dataclasses

import pytest
from tests.unit.sim_support import all_roles, linear_profile

from splitserve.sim.cluster import ClusterConfig
from splitserve.sim.profile import StepModel, StepPoint
from splitserve.sim.request import SimRequest
from splitserve.sim.runner import simulate

TRUTH = StepModel((), (0.01, 0.0008, 0.0005, 1e-7, 1e-6, 4e-7, -0.004))  # ..., c_attn, c_ctx, c_mask, c_one


def _points(model: StepModel) -> list[StepPoint]:
    points = [StepPoint(n, 1, n * n, model.prefill_s(n)) for n in (16, 64, 256, 512, 1024, 2048)]
    points += [StepPoint(n, 1, n * 2 * n, model.prefill_s(n, start=n), masked_attention=n * 2 * n) for n in (512, 2048)]
    points += [StepPoint(2 * n, 2, 2 * n * n, model.seconds(2 * n, 2, 2 * n * n)) for n in (256, 512)]
    return points + [StepPoint(b, b, 0.0, model.decode_s(b, c), "decode", b * (c + 1)) for b in (1, 4, 16) for c in (64, 512)]


def test_the_fit_tells_masked_from_causal_attention():
    fitted = StepModel.fit(_points(TRUTH), knots=())
    assert fitted.coef == pytest.approx(TRUTH.coef, rel=1e-6)
    assert fitted.seconds(1024, 2, 2 * 512 * 512) == pytest.approx(TRUTH.seconds(1024, 2, 2 * 512 * 512))
    assert TRUTH.prefill_s(512, start=512) - TRUTH.seconds(512, 1, 512 * 1024) == pytest.approx(4e-7 * 512 * 1024)


def test_a_lone_decode_has_its_own_intercept():
    """One token in a step (one-row linears: matrix-vector products) is c_one cheaper than the line
    through the batched steps says; from two rows on, nothing changes."""
    line = StepModel((), TRUTH.coef[:6])
    assert TRUTH.decode_s(1, 500) == pytest.approx(line.decode_s(1, 500) - 0.004)
    assert TRUTH.decode_s(2, 500) == line.decode_s(2, 500) and TRUTH.prefill_s(2) == line.prefill_s(2)


def test_profiles_without_the_masked_or_one_row_terms_read_them_as_zero():
    old = StepModel.from_dict({"knots": [128.0], "coef": [0.01, 0.001, -0.0002, 0.0005, 1e-7, 1e-6]})
    assert old.prefill_s(512, start=512) == old.seconds(512, 1, 512 * 1024)
    no_one_row = StepModel.from_dict({"knots": [128.0], "coef": [0.01, 0.001, -0.0002, 0.0005, 1e-7, 1e-6, 3e-7]})
    assert no_one_row.decode_s(1, 100) == pytest.approx(0.01 + 0.001 + 0.0005 + 1e-6 * 101)
    assert StepModel.from_dict(TRUTH.to_dict()) == TRUTH
    with pytest.raises(ValueError, match="coefficients"):
        StepModel((), (0.01, 0.001, 0.0005))


def test_a_long_prompts_second_chunk_pays_the_masked_term():
    """3000 tokens with a 2048 budget: chunk 2 (952 tokens after 2048) is masked; a cached prefix
    makes the first computed chunk masked too."""
    plain = linear_profile(budget=2048)
    masked = dataclasses.replace(plain, step=StepModel((), (*plain.step.coef, 4e-7), plain.step.min_step_s))
    ttft = {name: simulate([SimRequest(0, 3000, 1, 0.0)], ClusterConfig(mixed=1), all_roles(p))["median_ttft_ms"]
            for name, p in (("plain", plain), ("masked", masked))}
    assert ttft["masked"] - ttft["plain"] == pytest.approx(1e3 * 4e-7 * 952 * 3000, rel=1e-6)
    cached = {name: simulate([SimRequest(0, 1000, 1, 0.0, cached_tokens=512)], ClusterConfig(mixed=1), all_roles(p))
              for name, p in (("plain", plain), ("masked", masked))}
    extra = cached["masked"]["median_ttft_ms"] - cached["plain"]["median_ttft_ms"]
    assert extra == pytest.approx(1e3 * 4e-7 * 488 * 1000, rel=1e-6)


def test_the_profiler_measures_continuing_chunks_and_pairs(tiny_model):
    from splitserve.sim.measure import MeasurePlan, make_engine, prefill_points

    plan = MeasurePlan((64,), (1,), (16,), 1, 32, 2048, prefill_pairs=(16,))
    points = prefill_points(make_engine(tiny_model, plan), plan)
    assert [(p.num_tokens, p.num_seqs, p.attention, p.masked_attention) for p in points] == [
        (32, 1, 32 * 32, 0.0), (32, 1, 32 * 64, 32 * 64), (32, 2, 2 * 16 * 16, 0.0)]
