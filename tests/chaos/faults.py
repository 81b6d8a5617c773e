"""The fault injector: seeded choices, every action logged with its time.

Each fault kind is a function (cluster, rng, log) that breaks one thing and puts it right
again before it returns; `inject` runs one at a chosen moment of the load.
"""

from __future__ import annotations

import random
import signal
import time

import grpc

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.localcluster.procs import kill
from tests.support.cluster import node_stub, wait_until
from tests.support.metrics import scrape, value

DOWN_S = 2.0  # a killed node stays down this long before it is restarted
HANG_S = 5.0  # a stopped node stays stopped this long (longer than the router's health detection)
REDIS_DOWN_S = 3.0
FILL_HOLD_S = 4.0
FILL_TOKENS = 2000  # per reservation (the tiny model serves 2048 positions)


class FaultLog:
    def __init__(self, t0: float | None = None):
        self.t0 = time.monotonic() if t0 is None else t0
        self.events: list[str] = []

    def __call__(self, message: str) -> None:
        line = f"t={time.monotonic() - self.t0:6.2f}s {message}"
        self.events.append(line)
        print("chaos:", line, flush=True)


def _pick(cluster, rng: random.Random, role: str):
    nodes = sorted((n for r, n in cluster.nodes if r == role), key=lambda n: n.address)
    return rng.choice(nodes)


def _in_flight(cluster, victim) -> float:
    """The router's count of the victim's work in flight (prompt tokens in Prefill, or decodes)."""
    samples = scrape(cluster.http_url + "/metrics")
    return sum(value(samples, f"splitserve_router_node_{name}", node=victim.address)
               for name in ("inflight_prefill_tokens", "inflight_decodes"))


def _when_busy(cluster, victim, timeout_s: float = 5.0) -> float:
    """Waits (bounded) until the router has requests in flight on the victim, so that the fault
    hits some. The router is asked, not the node: a node answers only between engine steps."""
    busy = 0.0

    def check() -> bool:
        nonlocal busy
        busy = _in_flight(cluster, victim)
        return busy > 0
    wait_until(check, timeout_s, interval_s=0.002)
    return busy


def _kill_and_restart(cluster, rng, log, role: str) -> None:
    victim = _pick(cluster, rng, role)
    busy = _when_busy(cluster, victim)
    kill(victim)
    log(f"kill -9 {victim.name} ({victim.address}) while it had {busy:g} prompt tokens or decodes in flight")
    time.sleep(DOWN_S)
    fresh = cluster.restart_node(victim)
    log(f"restarted {fresh.name} on {fresh.address}")


def kill_prefill(cluster, rng, log) -> None:
    _kill_and_restart(cluster, rng, log, "prefill")


def kill_decode(cluster, rng, log) -> None:
    _kill_and_restart(cluster, rng, log, "decode")


def hang_node(cluster, rng, log) -> None:
    victim = _pick(cluster, rng, rng.choice(["prefill", "decode"]))
    busy = _when_busy(cluster, victim)
    kill(victim, signal.SIGSTOP)
    log(f"SIGSTOP {victim.name} ({victim.address}) while it had {busy:g} prompt tokens or decodes in flight")
    time.sleep(HANG_S)
    kill(victim, signal.SIGCONT)
    log(f"SIGCONT {victim.name}")


def restart_redis(cluster, rng, log) -> None:
    cluster.redis.stop()
    log(f"killed redis-server ({cluster.redis_url})")
    time.sleep(REDIS_DOWN_S)
    cluster.redis.start()
    log("restarted redis-server on the same port (empty)")


def drop_kv_transfer(cluster, rng, log) -> None:
    victim = _pick(cluster, rng, "prefill")
    for _ in range(3):
        kill(victim, signal.SIGUSR1)
        log(f"SIGUSR1 {victim.name}: its next KV transfer is dropped midway")
        time.sleep(1.0)


def fill_decode_pool(cluster, rng, log) -> None:
    victim = _pick(cluster, rng, "decode")
    channel, stub = node_stub(victim.address)
    held = []
    try:
        tokens = FILL_TOKENS
        while tokens >= 1:
            rid = f"chaos-fill-{len(held)}"
            try:
                stub.Reserve(node_pb2.ReserveRequest(request_id=rid, num_prompt_tokens=tokens), timeout=5)
                held.append(rid)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                tokens //= 2
        log(f"filled {victim.name}'s KV pool with {len(held)} reservations")
        time.sleep(FILL_HOLD_S)
    finally:
        for rid in held:
            stub.Abort(common_pb2.AbortRequest(request_id=rid), timeout=5)
        channel.close()
    log(f"released the {len(held)} reservations on {victim.name}")


FAULTS = {f.__name__: f for f in (kill_prefill, kill_decode, hang_node, restart_redis, drop_kv_transfer,
                                   fill_decode_pool)}
# Re-dispatches each injection must cause under round-robin load (the fault hit requests): a
# dead or hung node is picked before the health checks drop it, each dropped transfer fails
# its Prefill, a full pool refuses reservations. Redis being away only turns hits into misses.
MIN_FAILOVERS = {"kill_prefill": 1, "kill_decode": 1, "hang_node": 1, "restart_redis": 0, "drop_kv_transfer": 3,
                 "fill_decode_pool": 1}


def inject(kind: str, cluster, rng: random.Random, log: FaultLog, at_s: float) -> None:
    """Waits until `at_s` seconds after log.t0, then runs the fault (which recovers before returning)."""
    time.sleep(max(0.0, log.t0 + at_s - time.monotonic()))
    log(f"inject {kind}")
    FAULTS[kind](cluster, rng, log)
