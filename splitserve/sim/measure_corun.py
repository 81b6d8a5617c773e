"""How much one engine's steps stretch when other engine processes run on the same machine:
the calibration of host.py's model (`splitserve profile --corun K`).

K worker processes each load the engine once (the node's threads). For k = 1..K, the first k
of them run the same steps at the same moment for `seconds` (a decode batch, then whole
prompts), each timing its steps. With K >= 2, two processes then run different kinds at once
(one decodes while the other prefills). The sequence runs `rounds` times; every ratio is taken
within a round (against that round's steps alone: the machine's other load drifts between rounds
more than within one) and its median over rounds kept. The stretch for k is the median over
kinds of (median step with k running / median step with 1 running); `cross` is each kind's
median step next to the other kind over its median alone (a decode step next to a prefill
stretches more than next to another decode step: the prefill's gemms take the shared caches
and memory bandwidth).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass

DECODE_BATCH, DECODE_CONTEXT, PREFILL_TOKENS = 4, 256, 256


@dataclass(frozen=True)
class CorunConfig:
    model_dir: str
    threads: int = 1
    max_procs: int = 3
    seconds: float = 1.5  # per kind and k, in each round
    dtype: str = "float32"
    rounds: int = 3

    def __post_init__(self):
        if self.threads < 1 or self.max_procs < 1 or self.seconds <= 0 or self.rounds < 1:
            raise ValueError("threads, max_procs and rounds must be >= 1 and seconds > 0")


def _worker(config: CorunConfig, commands, results) -> None:
    import torch

    from splitserve.sim.measure import QUICK, make_engine, warm_up

    torch.set_num_threads(config.threads)
    engine = make_engine(config.model_dir, QUICK, config.dtype)
    warm_up(engine)
    results.put(("ready", os.getpid()))
    for kind, start, seconds in iter(commands.get, None):
        while time.time() < start:
            time.sleep(0.005)
        run = _decode_steps if kind == "decode" else _prefill_steps
        try:
            results.put((kind, run(engine, start + seconds)))
        except Exception as e:  # reported to the parent, which raises it
            results.put(("error", repr(e)))


def _timed(engine) -> float:
    t = time.perf_counter()
    engine.step()
    return time.perf_counter() - t


def _decode_steps(engine, until: float) -> list[float]:
    from splitserve.engine import SamplingParams

    vocab = engine.model_config.vocab_size
    params = SamplingParams(max_tokens=engine.max_model_len - DECODE_CONTEXT - 2, ignore_eos=True)
    for i in range(DECODE_BATCH):
        rid = f"corun-{i}-{time.time()}"
        engine.reserve(rid, DECODE_CONTEXT)
        engine.admit_prefilled(rid, [(i * 31 + j) % (vocab - 1) + 1 for j in range(DECODE_CONTEXT)], 1, params)
    engine.step()
    times = []
    while not times or time.time() < until:  # at least one step, even when the command came late (a loaded host)
        times.append(_timed(engine))
    for rid in list(engine.requests):
        engine.abort(rid)
    while engine.has_unfinished():
        engine.step()
    return times


def _prefill_steps(engine, until: float) -> list[float]:
    from splitserve.engine import SamplingParams

    vocab = engine.model_config.vocab_size
    times, n = [], 0
    while not times or time.time() < until:  # at least one prompt, as above
        n += 1
        engine.add_request([(n * 7919 + j * 31) % (vocab - 1) + 1 for j in range(PREFILL_TOKENS)],
                           SamplingParams(max_tokens=1, ignore_eos=True))
        while engine.has_unfinished():
            times.append(_timed(engine))
    return times


def _run_together(queues, results, kinds, seconds: float) -> dict:
    """Each queue's worker runs its kind's steps for `seconds` from the same moment: {kind: [medians]}."""
    start = time.time() + 0.3
    for q, kind in zip(queues, kinds):
        q.put((kind, start, seconds))
    medians: dict = {}
    for _ in kinds:
        kind, value = results.get(timeout=120)
        if kind == "error" or not value:
            raise RuntimeError(f"a co-run worker failed: {value or 'no steps timed'}")
        medians.setdefault(kind, []).append(statistics.median(value))
    return medians


def _one_round(queues, results, config: CorunConfig) -> tuple[dict, dict]:
    """Median step per kind with k = 1..K of a kind at once, and each kind next to the other kind."""
    medians = {"decode": [], "prefill": []}
    for k in range(1, config.max_procs + 1):
        for kind in medians:
            medians[kind].append(statistics.median(_run_together(queues[:k], results, [kind] * k, config.seconds)[kind]))
    mixed = _run_together(queues[:2], results, ["decode", "prefill"], config.seconds) if len(queues) >= 2 else {}
    return medians, {kind: v[0] for kind, v in mixed.items()}


def measure_corun(config: CorunConfig, log=print) -> dict:
    """{"cores", "threads", "stretch": [1.0, r2, ...], "cross": {kind: ratio next to the other kind}
    (K >= 2), "median_step_ms": {kind: [per k]} (of the first round), ...}. Each ratio is taken
    within one round (against that round's steps alone) and the median over `rounds` rounds kept:
    the machine's other load moves between rounds more than within one."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    queues = [ctx.Queue() for _ in range(config.max_procs)]
    procs = [ctx.Process(target=_worker, args=(config, q, results), daemon=True) for q in queues]
    for p in procs:
        p.start()
    rounds = []
    try:
        for _ in procs:
            results.get(timeout=300)
        for r in range(config.rounds):
            medians, mixed = _one_round(queues, results, config)
            rounds.append((medians, mixed))
            log(f"corun round {r + 1}: decode {[round(v * 1e3, 1) for v in medians['decode']]} ms, prefill "
                f"{[round(v * 1e3, 1) for v in medians['prefill']]} ms by busy count; next to the other kind "
                f"{ {kind: round(v * 1e3, 1) for kind, v in mixed.items()} } ms")
    finally:
        for q in queues:
            q.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return _summary(rounds, config)


def _summary(rounds: list, config: CorunConfig) -> dict:
    def ratio(kind, value_of):  # median over rounds of (a value / that round's step alone)
        return statistics.median(value_of(m, x) / m[kind][0] for m, x in rounds)

    kinds = ("decode", "prefill")
    stretch = [statistics.median(ratio(kind, lambda m, x, kind=kind, k=k: m[kind][k]) for kind in kinds)
               for k in range(config.max_procs)]
    cross = {kind: round(ratio(kind, lambda m, x, kind=kind: x[kind]), 4) for kind in rounds[0][1]}
    return {"cores": len(os.sched_getaffinity(0)), "threads": config.threads, "stretch": [round(v, 4) for v in stretch],
            "cross": cross, "rounds": len(rounds),
            "median_step_ms": {kind: [round(v * 1e3, 3) for v in rounds[0][0][kind]] for kind in kinds},
            "round_step_ms": [{"same_kind": {kind: [round(v * 1e3, 3) for v in m[kind]] for kind in kinds},
                               "next_to_other_kind": {kind: round(v * 1e3, 3) for kind, v in x.items()}} for m, x in rounds],
            "workload": {"decode": [DECODE_BATCH, DECODE_CONTEXT], "prefill_tokens": PREFILL_TOKENS},
            "seconds_per_point": config.seconds}
