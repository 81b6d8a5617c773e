"""Helpers for tests that run real clusters: reference outputs, node stubs, waiting."""

from __future__ import annotations

import asyncio
import random
import time

import grpc

from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.client import AsyncClient
from splitserve.engine import Engine, SamplingParams

PROMPT_LENGTHS = [1, 2, 5, 9, 16, 17, 31, 48, 64, 100, 150, 257, 300, 400, 513, 700]


def mixed_prompts(n: int = 16, seed: int = 0, vocab: int = 1000) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)])] for i in range(n)]


def request_kwargs(i: int, seeded: bool) -> dict:
    kwargs = dict(max_tokens=8 + i % 5, ignore_eos=True)
    if seeded:
        kwargs.update(temperature=0.8, top_p=0.95, seed=1000 + i)
    return kwargs


def reference(model_dir, prompts, seeded: bool) -> list[list[int]]:
    engine = Engine(model_dir)
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
