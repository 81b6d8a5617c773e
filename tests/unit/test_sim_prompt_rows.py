"""The engine computes more than the client counts: the router's BOS, and packed CPU linears
padding a step's rows (a 600-token prompt runs its linears on 640 rows). The simulator models both."""

from __future__ import annotations

import dataclasses

import pytest
from tests.unit.sim_support import all_roles, linear_profile

from splitserve.sim.cluster import ClusterConfig
from splitserve.sim.profile import Profile, StepModel, StepPoint, bucket_rows, computed_rows
from splitserve.sim.request import SimRequest
from splitserve.sim.runner import simulate


def test_the_row_buckets_are_the_engines():
    from splitserve.engine.cpu_linear import bucket_rows as engine_bucket_rows
    from splitserve.engine.cpu_linear import computed_rows as engine_computed_rows

    assert all(bucket_rows(n) == engine_bucket_rows(n) for n in range(1, 4200))
    assert all(computed_rows(n) == engine_computed_rows(n) for n in range(1, 4200))


def test_a_padded_step_costs_its_rows_in_the_token_terms_only():
    plain = StepModel((), (0.01, 0.001, 0.0005, 1e-7, 1e-6))
    padded = dataclasses.replace(plain, row_buckets=True)
    assert padded.seconds(512, 1, 512 * 512) == plain.seconds(512, 1, 512 * 512)
    assert padded.seconds(600, 1, 600 * 600) == pytest.approx(plain.seconds(640, 1, 600 * 600))
    assert padded.seconds(513, 1, 513 * 513) == pytest.approx(plain.seconds(513, 1, 513 * 513))  # 512 + 1
    assert padded.seconds(9, 9, 0.0, 900) == plain.seconds(9, 9, 0.0, 900)
    assert StepModel.from_dict(padded.to_dict()) == padded
    assert not StepModel.from_dict({"knots": [], "coef": list(plain.coef)}).row_buckets  # older profiles


def test_the_fit_on_padded_rows_matches_aligned_points():
    truth = dataclasses.replace(StepModel((128.0,), (0.005, 0.0008, -0.0002, 0.0003, 3e-7, 5e-6)), row_buckets=True)
    points = [StepPoint(n, 1, n * n, truth.prefill_s(n)) for n in (16, 64, 256, 320, 384, 512, 576, 640, 1024)]
    points += [StepPoint(b, b, 0.0, truth.decode_s(b, c), "decode", b * (c + 1)) for b in (1, 4, 16) for c in (64, 512)]
    fitted = StepModel.fit(points, knots=(128.0,), row_buckets=True)
    assert fitted.row_buckets
    for n in (300, 489, 513, 700):
        assert fitted.prefill_s(n) == pytest.approx(truth.prefill_s(n), rel=1e-6)


def _one_request(profile: Profile, prompt_tokens: int) -> dict:
    request = SimRequest(0, prompt_tokens, 4, 0.0)
    return simulate([request], ClusterConfig(mixed=1), all_roles(profile))


def test_the_prompt_gains_the_routers_special_tokens():
    plain = linear_profile()
    with_bos = dataclasses.replace(plain, engine=dataclasses.replace(plain.engine, prompt_special_tokens=1))
    got, want = _one_request(with_bos, 512), _one_request(plain, 513)
    assert got["median_ttft_ms"] == want["median_ttft_ms"] > _one_request(plain, 512)["median_ttft_ms"]
    assert got["requests"][0]["prompt_tokens"] == 512 and got["total_input_tokens"] == 512
    other = dataclasses.replace(plain, engine=dataclasses.replace(plain.engine, prompt_special_tokens=2))
    with pytest.raises(ValueError, match="disagree"):
        simulate([SimRequest(0, 8, 2, 0.0)], ClusterConfig(prefill=1, decode=1),
                 {"prefill": with_bos, "decode": other})


def test_the_profile_records_what_the_engine_adds(tiny_model):
    import torch

    from splitserve.engine import Engine, EngineConfig
    from splitserve.sim.profiler import ProfileConfig, engine_shape, pads_rows

    torch.set_num_threads(1)
    engine = Engine(tiny_model, EngineConfig(num_blocks=64))
    mc = engine.model_config
    shape = engine_shape(ProfileConfig(str(tiny_model)), mc, 1024, len(engine.tokenizer.encode("")))
    assert shape.prompt_special_tokens == len(engine.tokenizer.encode("x")) - len(engine.tokenizer.encode("x", False))
    from splitserve.engine.cpu_linear import available

    assert pads_rows(engine) == available()
    assert not pads_rows(Engine(tiny_model, EngineConfig(num_blocks=64, packed_cpu_linear=False)))
