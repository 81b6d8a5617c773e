"""Is a decode step slower on a worker thread (where a node's engine loop runs it) than on the
main thread (where `splitserve profile` times it)? Same engine, same process, alternating.

    flock -x /tmp/splitserve-timing.lock python benchmarks/simulator_step_threads.py

`small`, one torch thread (set on the main thread first, as node/server.py does), batch 1 and 4
at context 256, median of 12 steps after one warm-up step, twice each way. Prints one line per
measurement.
"""

from __future__ import annotations

import statistics
import threading

import torch


def measure(engine, on_thread: bool, batch: int, context: int = 256, steps: int = 12) -> tuple[float, int]:
    from splitserve.sim.measure import _admit_batch, _timed_step

    out: dict = {}

    def body() -> None:
        _admit_batch(engine, batch, context)
        engine.step()
        out["t"] = [_timed_step(engine) for _ in range(steps)]
        out["threads"] = torch.get_num_threads()
        for rid in list(engine.requests):
            engine.abort(rid)
        while engine.has_unfinished():
            engine.step()

    if on_thread:
        worker = threading.Thread(target=body)
        worker.start()
        worker.join()
    else:
        body()
    return statistics.median(out["t"]), out["threads"]


def main() -> None:
    torch.set_num_threads(1)
    import splitserve.sim.measure as m
    from splitserve.modelgen.cache import ensure_model

    m.DECODE_STEPS = 14  # _admit_batch's max_tokens covers the 13 steps
    engine = m.make_engine(ensure_model("small"), m.QUICK)
    m.warm_up(engine)
    for _ in range(2):
        for on_thread in (False, True):
            for batch in (1, 4):
                seconds, threads = measure(engine, on_thread, batch)
                print(f"{'thread' if on_thread else 'main'} batch {batch} context 256 torch threads {threads} "
                      f"median {seconds * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
