"""Helpers for tests that run real clusters: reference outputs, node stubs, waiting."""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.client import AsyncClient
from splitserve.engine import Engine, SamplingParams
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.procs import Service, spawn, stop

PROMPT_LENGTHS = [1, 2, 5, 9, 16, 17, 31, 48, 64, 100, 150, 257, 300, 400, 513, 700]


def mixed_prompts(n: int = 16, seed: int = 0, vocab: int = 1000) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)])] for i in range(n)]


def request_kwargs(i: int, seeded: bool) -> dict:
    kwargs = dict(max_tokens=8 + i % 5, ignore_eos=True)
    if seeded:
        kwargs.update(temperature=0.8, top_p=0.95, seed=1000 + i)
    if i % 4 == 3:  # the prefill node's first token and the decode node's later ones both see the history
        kwargs.update(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2)
    if i % 4 == 1:  # both nodes add the bias: token 42 comes up often, token 7 never
        kwargs.update(logit_bias={42: 3.0, 7: -100.0})
    return kwargs


def reference(model_dir, prompts, seeded: bool, config=None) -> list[list[int]]:
    engine = Engine(model_dir, config)
    params = []
    for i in range(len(prompts)):
        kw = request_kwargs(i, seeded)
        params.append(SamplingParams(**kw))
    return [r.token_ids for r in engine.generate(prompts, params)]


async def send_all(url: str, prompts, seeded: bool):
    async with AsyncClient(url, timeout_s=120) as client:
        return await asyncio.gather(*(client.complete(prompt_token_ids=p, **request_kwargs(i, seeded))
                                      for i, p in enumerate(prompts)))


def node_stub(address: str):
    channel = grpc.insecure_channel(address)
    return channel, node_pb2_grpc.NodeStub(channel)


def node_stats(address: str) -> node_pb2.NodeStats:
    channel, stub = node_stub(address)
    try:
        return stub.Stats(node_pb2.StatsRequest(), timeout=5)
    finally:
        channel.close()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def used_blocks_settle_to_zero(address: str, timeout_s: float = 10.0) -> bool:
    return wait_until(lambda: node_stats(address).num_used_blocks == 0, timeout_s)


def start_nodes_at_once(cluster: LocalCluster, names_roles: list[tuple[str, str]]) -> list[Service]:
    """Spawns the cluster's nodes side by side and waits for all (each spends seconds importing torch
    and loading its model; none needs another). They share the CPU, so each may take as long as all
    did one by one: each gets the one-by-one total as its timeout. If one fails, the others are stopped."""
    timeout_s = cluster.ready_timeout_s * len(names_roles)
    with ThreadPoolExecutor(len(names_roles)) as pool:
        commands = [(name, cluster.node_command(role, device=cluster.assign_device(name))) for name, role in names_roles]
        futures = [pool.submit(spawn, name, command, timeout_s) for name, command in commands]
    started = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        stop(started)
        raise failed[0]
    return started


class ParallelCluster(LocalCluster):
    """LocalCluster whose nodes start at once (the router still starts last: it needs their addresses).
    Same processes, flags and order of `nodes`; `splitserve up` tests cover the one-by-one start."""

    def _start_nodes(self, log) -> None:
        roles = [role for role, count in self.counts.items() for _ in range(count)]
        names = [f"{role}-{roles[:i].count(role)}" for i, role in enumerate(roles)]
        self.nodes += zip(roles, start_nodes_at_once(self, list(zip(names, roles))))
