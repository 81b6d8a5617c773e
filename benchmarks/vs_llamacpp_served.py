"""The served half of vs_llamacpp.py: splitserve clusters and llama-server under the same `splitserve bench`.

All servers are started first and stay up; each repeat then runs every concurrency against
every server in turn (interleaved), so slow phases of a shared machine hit all of them alike.
Every server process (and the nodes `splitserve up` starts in sessions of their own) gets the
benchmark's own autogroup nice: with Linux's autogroup scheduling, `nice` does not reach across
sessions, and a server left in a fresh session would compete with every other session on the
machine while the client does not. Results are written after every point (`on_point`), so a run
cut off by a time limit keeps what it measured.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import llamacpp

from splitserve.bench.provenance import portable

METRICS = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "output_throughput")
READY_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_commands(model_dir: Path, gguf: Path, args) -> dict[str, tuple[list[str], int]]:
    """name -> (command, HTTP port)."""
    up = [sys.executable, "-m", "splitserve.cli", "up", "--model", str(model_dir)]
    commands = {}
    pools = ["--prefill", "1", "--decode", "1"]
    for name, layout, threads in (("splitserve-colocated", ["--colocated", "1", "--prefill", "0", "--decode", "0"], args.threads),
                                  ("splitserve-1p1d", pools, max(1, args.threads // 2)),
                                  ("splitserve-1p1d-shared", pools, 0)):
        port = free_port()
        commands[name] = (up + layout + ["--threads", str(threads), "--port", str(free_port()), "--http-port", str(port)], port)
    port = free_port()
    ctx_per_slot = args.served_input_len + args.served_output_len + 64
    commands["llama-server"] = (llamacpp.server_command(gguf, args.threads, port, args.llama_slots, ctx_per_slot), port)
    return commands


def wait_ready(port: int, proc: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise RuntimeError(f"{name} did not serve /v1/models within {READY_TIMEOUT_S} s")


def bench_point(url: str, model_dir: Path, concurrency: int, args, workdir: Path, seed: int) -> dict:
    """One `splitserve bench` run against url (http:// or grpc://): fixed lengths, closed loop at concurrency.

    Each (repeat, concurrency) point draws its own prompts (seed): with one seed for all, a point's
    prompts were the earlier points' and every server's prompt cache answered part of them (at c=32
    the colocated node's median TTFT read 3.9 s with them and 18.3 s without)."""
    out = workdir / f"c{concurrency}-{time.monotonic_ns()}.json"
    num_requests = args.served_requests or max(4, min(2 * concurrency, 32))
    cmd = [sys.executable, "-m", "splitserve.cli", "bench", "--url", url, "--workload", "fixed",
           "--input-len", str(args.served_input_len), "--output-len", str(args.served_output_len),
           "--tokenizer", str(model_dir), "--concurrency", str(concurrency), "--num-requests", str(num_requests),
           "--warmup", "1", "--seed", str(seed), "--no-progress", "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    if data["failed"]:
        raise RuntimeError(f"{data['failed']} requests failed against {url} at concurrency {concurrency}")
    return {m: data[m] for m in METRICS}


def measure_served(model_dir: Path, gguf: Path, args, on_point=None) -> dict:
    """on_point(result so far) is called after every measured point."""
    commands = server_commands(model_dir, gguf, args)
    runs = {name: {str(c): [] for c in args.concurrency} for name in commands}
    loads = []
    signal.signal(signal.SIGTERM, _exit_on_term)  # `timeout` sends SIGTERM: stop the servers on the way out
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for name, (cmd, port) in commands.items():
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            stack.callback(_stop, proc)
            wait_ready(port, proc, name)
            _share_autogroup(proc.pid)
        for repeat in range(args.repeats):
            loads.append(os.getloadavg()[0])
            for c in args.concurrency:
                seed = 1000 * repeat + c  # the same prompts for every server at this point, new ones per point
                for name, (_, port) in commands.items():
                    runs[name][str(c)].append(bench_point(f"http://127.0.0.1:{port}", model_dir, c, args, Path(tmp), seed))
                    if on_point is not None:
                        on_point(_summary(runs, loads, commands, args))
            print(f"served repeat {repeat + 1}/{args.repeats} done (load {loads[-1]:.1f})", flush=True)
    return _summary(runs, loads, commands, args)


def _summary(runs: dict, loads: list[float], commands: dict, args) -> dict:
    medians = {name: {c: {m: statistics.median(r[m] for r in points) for m in METRICS} for c, points in per_c.items() if points}
               for name, per_c in runs.items()}
    return {"runs": runs, "medians": medians, "load_average_1m": loads,
            "config": {"input_len": args.served_input_len, "output_len": args.served_output_len,
                       "concurrency": args.concurrency, "repeats": args.repeats,
                       "servers": {name: " ".join(Path(cmd[0]).name if i == 0 else str(portable(a)) for i, a in enumerate(cmd))
                                   for name, (cmd, _) in commands.items()}}}


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _share_autogroup(pid: int) -> None:
    """Gives pid and its descendants this process's autogroup nice (Linux with autogroup; else nothing)."""
    try:
        nice = Path("/proc/self/autogroup").read_text().split()[-1]
        for child in [pid, *_descendants(pid)]:
            Path(f"/proc/{child}/autogroup").write_text(nice)
    except (OSError, IndexError):
        pass


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def print_served(result: dict) -> None:
    print(f"{'server':24}{'c':>4}{'TTFT med':>10}{'TTFT p99':>10}{'TPOT med':>10}{'TPOT p99':>10}{'out tok/s':>11}")
    for name, per_c in result["medians"].items():
        for c, m in per_c.items():
            print(f"{name:24}{c:>4}{m['median_ttft_ms']:10.0f}{m['p99_ttft_ms']:10.0f}{m['median_tpot_ms']:10.1f}"
                  f"{m['p99_tpot_ms']:10.1f}{m['output_throughput']:11.1f}")
