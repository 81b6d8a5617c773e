"""sim/step_speed.py: a node's logged steps against a step model, per kind and time window."""

from splitserve.runtime.step_log import StepLog, StepShape
from splitserve.sim.profile import StepModel
from splitserve.sim.step_speed import Intervals, folder_logs, predicted_s, step_speed

# 1 ms a step + 0.1 ms a token + 1 us per attention pair + 2 us per decode context token + 3 us per masked pair
MODEL = StepModel((), (1e-3, 1e-4, 0.0, 1e-6, 2e-6, 3e-6))


def test_a_logged_shape_is_priced_with_the_profiles_terms():
    prompt = {"prompt": [[0, 100], [50, 10]], "decode": [], "s": 0, "t": 0}
    assert abs(predicted_s(MODEL, prompt) - (1e-3 + 110e-4 + 1e-6 * (10000 + 600) + 3e-6 * 600)) < 1e-12
    decode = {"prompt": [], "decode": [10, 20], "s": 0, "t": 0}
    assert abs(predicted_s(MODEL, decode) - (1e-3 + 2e-4 + 2e-6 * 30)) < 1e-12
    assert abs(MODEL.decode_s(2, 14) - predicted_s(MODEL, decode)) < 1e-12  # the same as the simulator's decode step


def test_speed_is_the_median_ratio_per_kind_in_the_window_alone_and_shared(tmp_path):
    decode = StepShape([], [100])  # predicted 1 ms + 0.1 ms + 0.2 ms = 1.3 ms
    prompt = StepShape([(0, 10)], [])  # 1 ms + 1 ms + 0.1 ms = 2.1 ms
    logs = {"decode-a": [(5.0, 1.3e-3 * 1.5, decode), (6.0, 2.1e-3 * 3.0, prompt), (99.0, 1.0, decode)],
            "mixed-b": [(5.0005, 1.3e-3 * 2.0, decode), (7.0, 2.1e-3 * 3.0, prompt)]}
    for node, steps in logs.items():
        log = StepLog.open(tmp_path, node)
        for step in steps:
            log.write(*step)
        log.close()
    speed = step_speed(folder_logs(tmp_path), MODEL, 0.0, 10.0)
    assert abs(speed["decode"] - 1.75) < 1e-9 and abs(speed["prefill"] - 3.0) < 1e-9
    assert speed["prefill_alone"] == speed["prefill"] and speed["prefill_shared"] is None
    assert speed["decode_alone"] is None and abs(speed["decode_shared"] - 1.75) < 1e-9  # the two overlap
    assert speed["steps"] == {"prefill_all": 2, "prefill_alone": 2, "prefill_shared": 0,
                              "decode_all": 2, "decode_alone": 0, "decode_shared": 2}
    empty = step_speed(folder_logs(tmp_path), MODEL, 50.0, 60.0)
    assert empty["decode"] is None and empty["prefill_alone"] is None and sum(empty["steps"].values()) == 0


def test_intervals_measure_how_much_of_a_span_they_cover():
    spans = Intervals([(0, 1), (0.5, 2), (3, 4)])
    assert spans.covered(1.5, 3.5) == 1.0 and spans.covered(2, 3) == 0.0 and spans.covered(-1, 10) == 3.0
