"""Arrival processes: mean rate and coefficient of variation; trace replay keeps the gaps."""

import math

import numpy as np
import pytest

from splitserve.bench import traces
from splitserve.bench.arrivals import ArrivalConfig, arrival_offsets, trace_offsets


def _gaps(config, n=20000):
    offsets = np.asarray(list(arrival_offsets(config, num_requests=n)))
    return np.diff(np.concatenate([[0.0], offsets]))  # the first request waits one gap too


def _rate_cv(gaps):
    return 1 / gaps.mean(), gaps.std() / gaps.mean()


@pytest.mark.parametrize("kind, burstiness, cv", [("poisson", 1.0, 1.0), ("gamma", 0.5, math.sqrt(2)),
                                                  ("gamma", 4.0, 0.5), ("constant", 1.0, 0.0)])
def test_rate_and_cv(kind, burstiness, cv):
    rate, got_cv = _rate_cv(_gaps(ArrivalConfig(kind=kind, rate=10.0, burstiness=burstiness, seed=1, normalize=False)))
    assert rate == pytest.approx(10.0, rel=0.04)
    assert got_cv == pytest.approx(cv, abs=0.06)


def test_count_mode_normalized_like_vllm():
    offsets = list(arrival_offsets(ArrivalConfig(kind="gamma", rate=5.0, burstiness=0.5, seed=3), num_requests=100))
    assert len(offsets) == 100 and offsets[-1] == pytest.approx(100 / 5.0)
    assert all(b >= a for a, b in zip(offsets, offsets[1:]))


def test_constant_is_exact_and_seeded_is_reproducible():
    assert np.allclose(_gaps(ArrivalConfig(kind="constant", rate=4.0), 50), 0.25)
    a = list(arrival_offsets(ArrivalConfig(rate=3.0, seed=7), num_requests=30))
    b = list(arrival_offsets(ArrivalConfig(rate=3.0, seed=7), num_requests=30))
    c = list(arrival_offsets(ArrivalConfig(rate=3.0, seed=8), num_requests=30))
    assert a == b and a != c


def test_duration_mode_and_infinite_rate():
    offsets = list(arrival_offsets(ArrivalConfig(rate=50.0, seed=2), duration_s=40.0))
    assert max(offsets) < 40.0 and len(offsets) == pytest.approx(2000, rel=0.08)
    assert list(arrival_offsets(ArrivalConfig(), num_requests=4)) == [0.0] * 4
    endless = arrival_offsets(ArrivalConfig(), duration_s=1.0)  # closed loop: runner stops it
    assert [next(endless) for _ in range(1000)] == [0.0] * 1000


def test_trace_replay_keeps_gaps_after_scaling():
    stamps = [100.0, 100.5, 101.0, 104.0, 104.25]
    gaps = np.diff(stamps)
    scaled = trace_offsets(ArrivalConfig(kind="trace", time_scale=0.5), stamps)
    assert scaled[0] == 0.0 and np.allclose(np.diff(scaled), gaps * 0.5)
    by_rate = trace_offsets(ArrivalConfig(kind="trace", rate=2.0), stamps)  # 5 requests over 5/2 s
    assert by_rate[-1] == pytest.approx(2.5) and np.allclose(np.diff(by_rate) / np.diff(by_rate).sum(), gaps / gaps.sum())
    cut = list(arrival_offsets(ArrivalConfig(kind="trace"), num_requests=3, trace_s=stamps))
    assert cut == [0.0, 0.5, 1.0]
    counted = list(arrival_offsets(ArrivalConfig(kind="trace", rate=2.0), num_requests=3, trace_s=stamps))
    assert counted == pytest.approx([0.0, 0.75, 1.5])  # the 3 requests sent span 3/2 s, gaps kept
    assert list(arrival_offsets(ArrivalConfig(kind="trace"), duration_s=4.1, trace_s=stamps)) == [0.0, 0.5, 1.0, 4.0]


def test_azure_trace_window_replay():
    all_rows = traces.load_azure(traces.data_file(traces.AZURE_FILES["azure-conv"]))
    rows = traces.window(all_rows, 60.0, 120.0)
    stamps = [r.time_s for r in rows]
    assert rows and all(60.0 <= t - all_rows[0].time_s < 120.0 for t in stamps)
    offsets = list(arrival_offsets(ArrivalConfig(kind="trace", time_scale=0.25), trace_s=stamps))
    assert len(offsets) == len(rows)
    assert np.allclose(np.diff(offsets), np.diff(stamps) * 0.25, atol=1e-6)


def test_azure_timestamp_parsing():
    a = traces.parse_azure_time("2023-11-16 18:15:46.6805900")
    b = traces.parse_azure_time("2023-11-16 18:15:50.9951690")
    assert b - a == pytest.approx(4.314579, abs=1e-6)
    assert traces.parse_azure_time("2024-05-12 00:00:00+00:00") + 0.001163 == pytest.approx(
        traces.parse_azure_time("2024-05-12 00:00:00.001163+00:00"))


@pytest.mark.parametrize("kwargs", [dict(kind="uniform"), dict(rate=0.0), dict(burstiness=0.0),
                                    dict(kind="poisson", burstiness=0.5), dict(kind="gamma", time_scale=2.0),
                                    dict(kind="trace", rate=2.0, time_scale=0.5)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        ArrivalConfig(**kwargs)


def test_a_ramp_walks_the_rate_from_start_to_end():
    """Constant gaps make the rates visible: request i's gap is 1 / rate_i (vLLM's linear and exponential ramps)."""
    linear = ArrivalConfig(kind="constant", rate=2.0, ramp="linear", ramp_end=10.0)
    gaps = np.diff([0.0, *arrival_offsets(linear, 5)])
    assert gaps == pytest.approx([1 / 2, 1 / 4, 1 / 6, 1 / 8, 1 / 10])
    exponential = ArrivalConfig(kind="constant", rate=1.0, ramp="exponential", ramp_end=16.0)
    assert [exponential.rate_of(i, 5) for i in range(5)] == pytest.approx([1, 2, 4, 8, 16])
    poisson = ArrivalConfig(kind="poisson", rate=1.0, ramp="linear", ramp_end=20.0, seed=3)
    offsets = list(arrival_offsets(poisson, 2000))
    assert np.mean(np.diff(offsets[:200])) > 3 * np.mean(np.diff(offsets[-200:]))  # late gaps are far shorter


@pytest.mark.parametrize("kwargs, message", [
    (dict(ramp="sideways", ramp_end=2.0, rate=1.0), "expected one of"),
    (dict(ramp="linear", rate=1.0), "finite start and end"),
    (dict(ramp="linear", ramp_end=2.0), "finite start and end"),  # no start: the rate is inf
    (dict(kind="trace", ramp="linear", rate=1.0, ramp_end=2.0), "not of a trace"),
])
def test_a_bad_ramp_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArrivalConfig(**kwargs)
    with pytest.raises(ValueError, match="request count"):
        list(arrival_offsets(ArrivalConfig(rate=1.0, ramp="linear", ramp_end=2.0), duration_s=5.0))
