"""The chaos suite's verdicts (tests/chaos/load.py: classify) can fail: wrong or cut outputs and
undocumented errors are lost, a request past its deadline hung."""

from splitserve.bench.metrics import RequestRecord
from splitserve.bench.runner import TIME_LIMIT_ERROR
from tests.chaos.load import classify

DEADLINE_S = 30.0


def record(i: int, tokens=None, error: str = "", took_s: float = 1.0) -> RequestRecord:
    r = RequestRecord(i, prompt_tokens=4, expected_output_tokens=3, send_time=100.0)
    if error:
        r.fail(error)
    else:
        r.token_times, r.token_ids = [100.5], list(tokens)
        r.finish(len(tokens))
    r.end_time = 100.0 + took_s
    return r


def test_each_outcome_lands_in_its_bucket():
    expected = [[1, 2, 3]] * 7
    records = [record(0, [1, 2, 3]), record(1, [1, 2, 4]), record(2, [1, 2]),
               record(3, error="UNAVAILABLE: failed after 3 attempt(s)"), record(4, error="INTERNAL: boom"),
               record(5, error=TIME_LIMIT_ERROR), record(6, error="DEADLINE_EXCEEDED: late", took_s=DEADLINE_S + 20)]
    tally = classify(records, expected, DEADLINE_S).to_dict()
    assert tally["completed_exactly"] == 1 and tally["failed_by_code"] == {"UNAVAILABLE": 1}
    assert tally["lost"] == 3 and tally["hung"] == 2 and len(tally["lost_examples"]) == 3
