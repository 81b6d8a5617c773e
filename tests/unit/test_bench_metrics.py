"""Metric math on synthetic timings, against hand-computed values of vLLM's definitions."""

import math

import pytest

from splitserve.bench.metrics import (NO_CHUNK_ERROR, RequestRecord, compute_metrics, parse_percentiles,
                                      parse_slos)


def _record(rid, prompt, send, times, n_out, ok=True):
    r = RequestRecord(rid, prompt, n_out, send_time=send, token_times=list(times), output_tokens=n_out)
    r.success, r.done = ok, True
    if not ok:
        r.error = "boom"
    return r


@pytest.fixture
def records():
    return [
        _record(0, 10, 0.0, [0.1, 0.15, 0.25, 0.30], 4),  # ttft .1, e2el .3, tpot .2/3, itl .05 .1 .05
        _record(1, 20, 1.0, [1.2], 1),  # one token: no TPOT sample; TPOT 0 for goodput
        _record(2, 30, 2.0, [2.3, 2.5], 5),  # 2 chunks, 5 tokens: tpot .2/4, one ITL sample .2
        _record(3, 100, 3.0, [3.1], 7, ok=False),  # failed: excluded everywhere
    ]


def test_counts_and_throughputs(records):
    m = compute_metrics(records, duration_s=4.0)
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 1, 60, 10)
    assert m.request_throughput == pytest.approx(0.75)
    assert m.output_throughput == pytest.approx(2.5)
    assert m.total_token_throughput == pytest.approx(17.5)
    assert m.request_goodput is None
    assert (m.max_output_tokens_per_s, m.max_concurrent_requests) == (4.0, 1)


def test_latency_stats(records):
    m = compute_metrics(records, duration_s=4.0, percentiles=(50, 99, 99.9))
    ttft, tpot, itl, e2el = (m.stats[k] for k in ("ttft", "tpot", "itl", "e2el"))
    assert (ttft.mean_ms, ttft.median_ms) == pytest.approx((200.0, 200.0))
    assert ttft.std_ms == pytest.approx(math.sqrt(0.02 / 3) * 1000)  # population std
    assert dict(ttft.percentiles_ms)[99] == pytest.approx(298.0)  # linear interpolation
    # TPOT only for outputs > 1 token: (0.3-0.1)/3 and (0.5-0.3)/4
    assert tpot.mean_ms == pytest.approx((200 / 3 + 50) / 2)
    assert dict(tpot.percentiles_ms)[99] == pytest.approx(50 + 0.99 * (200 / 3 - 50))
    # ITL pools every chunk gap: .05 .1 .05 .2
    assert (itl.mean_ms, itl.median_ms) == pytest.approx((100.0, 75.0))
    assert itl.std_ms == pytest.approx(math.sqrt(0.00375) * 1000)
    assert (e2el.mean_ms, e2el.median_ms) == pytest.approx((1000 / 3, 300.0))
    d = m.to_dict()
    assert d["p99_ttft_ms"] == pytest.approx(298.0) and "p99.9_itl_ms" in d and "p50_e2el_ms" in d


@pytest.mark.parametrize("slos, good", [
    ({"ttft": 250, "tpot": 60}, 1),  # A: tpot 66.7 > 60; B: tpot 0 (one token); C: ttft 300 > 250
    ({"tpot": 60}, 2),
    ({"e2el": 300}, 2),  # <= holds at the boundary (A's e2el is 300 ms)
    ({"ttft": 0}, 0),
])
def test_goodput(records, slos, good):
    assert compute_metrics(records, 4.0, slos_ms=slos).request_goodput == pytest.approx(good / 4.0)


def test_one_token_outputs_only():
    m = compute_metrics([_record(0, 5, 0.0, [0.2], 1), _record(1, 5, 0.0, [0.4], 1)], 1.0, slos_ms={"tpot": 1})
    assert m.stats["tpot"].mean_ms == 0.0 and m.stats["itl"].mean_ms == 0.0  # empty samples report 0
    assert m.request_goodput == 2.0
    assert m.stats["ttft"].mean_ms == pytest.approx(300.0)


def test_all_failed_and_warmup_skipped():
    warm = _record(9, 5, 0.0, [0.1], 1)
    warm.warmup = True
    m = compute_metrics([_record(0, 5, 0.0, [0.1], 3, ok=False), warm], 2.0)
    assert (m.completed, m.failed, m.total_input, m.total_output, m.request_throughput) == (0, 1, 0, 0, 0.0)
    assert m.stats["ttft"].mean_ms == 0.0 and m.max_concurrent_requests == 0


def test_output_count_fallbacks():
    r = _record(0, 5, 0.0, [0.1, 0.2, 0.3], None)
    assert compute_metrics([r], 1.0).total_output == 1  # no usage, no tokenizer: 1, as vLLM
    r.generated_text = "a b c d"
    m = compute_metrics([r], 1.0, count_tokens=lambda text: len(text.split()))
    assert m.total_output == 4 and m.stats["tpot"].mean_ms == pytest.approx(200 / 3)


def test_record_lifecycle():
    r = RequestRecord(0, 3, 2)
    r.mark_sent()
    r.finish(2)  # no chunk seen
    assert not r.success and r.error == NO_CHUNK_ERROR
    r = RequestRecord(1, 3, 2)
    r.mark_sent()
    r.mark_token("a")
    r.mark_token("b")
    r.finish(2)
    r.fail("late")  # first outcome wins
    assert r.success and r.generated_text == "ab" and r.ttft_s <= r.e2el_s and len(r.itls_s) == 1


def test_parsers():
    assert parse_slos("ttft:500,tpot:50") == {"ttft": 500.0, "tpot": 50.0}
    assert parse_slos("ttft:500 e2el:2000") == {"ttft": 500.0, "e2el": 2000.0}
    assert parse_slos(None) == {}
    for bad in ("itl:5", "ttft", "ttft:-1"):
        with pytest.raises(ValueError):
            parse_slos(bad)
    assert parse_percentiles("50,90,99.9") == (50.0, 90.0, 99.9)
    with pytest.raises(ValueError):
        parse_percentiles("101")
    with pytest.raises(ValueError):
        compute_metrics([], 0.0)


def test_an_embedding_counts_its_input_and_latency_only():
    r = RequestRecord(0, 7, 128)
    r.mark_sent()
    r.finish_pooled()
    assert r.success and r.pooled and len(r.token_times) == 1 and r.ttft_s == r.e2el_s
    m = compute_metrics([r], 2.0, count_tokens=lambda text: 99)
    assert (m.total_input, m.total_output, m.output_throughput, m.total_token_throughput) == (7, 0, 0.0, 3.5)
    assert m.max_output_tokens_per_s == 0 and m.stats["tpot"].mean_ms == 0 and m.stats["e2el"].mean_ms > 0
