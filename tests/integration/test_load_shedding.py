"""Load shedding and deadlines on a real cluster whose router holds at most 4 requests: a burst
beyond that gets 429 / RESOURCE_EXHAUSTED with Retry-After, nothing crashes, and every accepted
request completes; a request past the router's deadline is cancelled on the nodes."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import grpc
import pytest

from splitserve.client import AsyncClient, Client
from tests.support.cluster import ParallelCluster, used_blocks_settle_to_zero

pytestmark = pytest.mark.slow
MAX_QUEUE, BURST, TOKENS = 4, 24, 48
TIMEOUT_S = 1.5
LONG = 2030  # tokens: seconds on the tiny model, far past TIMEOUT_S


@pytest.fixture(scope="module")
def cluster(tiny_model):
    args = ["--max-queue", str(MAX_QUEUE), "--retry-after-s", "2", "--request-timeout-s", str(TIMEOUT_S)]
    with ParallelCluster(tiny_model, http_port=-1, router_args=args) as c:
        yield c


async def _stream(session: aiohttp.ClientSession, url: str, i: int) -> tuple[int, dict, int | None]:
    body = {"prompt": f"request {i}", "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    async with session.post(url + "/v1/completions", json=body) as response:
        if response.status != 200:
            return response.status, dict(response.headers), (await response.json())
        usage = None
        async for line in response.content:
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
        return 200, dict(response.headers), usage


async def _http_burst(url: str):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        return await asyncio.gather(*(_stream(session, url, i) for i in range(BURST)))


def test_http_burst_beyond_capacity_gets_429_and_the_rest_completes(cluster):
    results = asyncio.run(_http_burst(cluster.http_url))
    rejected = [r for r in results if r[0] == 429]
    accepted = [r for r in results if r[0] == 200]
    assert len(rejected) + len(accepted) == BURST and rejected and len(accepted) >= MAX_QUEUE
    for _, headers, body in rejected:
        assert headers["Retry-After"] == "2" and body["error"]["code"] == "overloaded"
    assert all(usage["completion_tokens"] == TOKENS for _, _, usage in accepted)
    with Client(cluster.url, timeout_s=30) as client:
        assert client.complete(prompt="after", max_tokens=3, ignore_eos=True).final.completion_tokens == 3


async def _grpc_burst(url: str):
    async with AsyncClient(url, timeout_s=60) as client:
        return await asyncio.gather(*(client.complete(prompt=f"request {i}", max_tokens=TOKENS, ignore_eos=True)
                                      for i in range(BURST)), return_exceptions=True)


def test_grpc_burst_beyond_capacity_gets_resource_exhausted(cluster):
    results = asyncio.run(_grpc_burst(cluster.url))
    errors = [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert errors and len(done) >= MAX_QUEUE
    for err in errors:
        assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(err.trailing_metadata())["retry-after"] == "2"
    assert all(len(r.token_ids) == TOKENS for r in done)


def test_router_deadline_ends_long_requests_on_both_fronts(cluster):
    start = time.monotonic()
    with Client(cluster.url, timeout_s=30) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.complete(prompt="long", max_tokens=LONG, ignore_eos=True)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < TIMEOUT_S + 1.0

    async def post():
        async with aiohttp.ClientSession() as session:
            body = {"prompt": "long", "max_tokens": LONG, "ignore_eos": True}
            async with session.post(cluster.http_url + "/v1/completions", json=body) as response:
                return response.status, await response.json()

    status, body = asyncio.run(post())
    assert status == 504 and body["error"]["code"] == "deadline_exceeded"
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address, timeout_s=5)


def test_more_choices_than_slots_is_a_429_that_takes_no_slot(cluster):
    """n choices take n slots: n above the router's limit is refused whole, and the slots it took are freed."""
    import urllib.error
    import urllib.request

    def post(n: int) -> int:
        body = json.dumps({"prompt": "x", "max_tokens": 2, "n": n, "temperature": 0}).encode()
        request = urllib.request.Request(cluster.http_url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    assert post(MAX_QUEUE + 1) == 429
    assert post(MAX_QUEUE) == 200  # every slot free again


def test_a_beam_search_is_admitted_once_and_ends_at_the_router_deadline(cluster):
    """use_beam_search holds a slot per beam for the whole search, and all its steps run under one deadline: a
    search wider than the router's limit is refused before any step, and a long one ends with a 504 at the
    deadline (each step is short: a deadline per step would let it run on)."""
    import urllib.error
    import urllib.request

    def post(width: int, max_tokens: int) -> tuple[int, dict]:
        body = {"prompt": "x", "max_tokens": max_tokens, "n": width, "use_beam_search": True, "ignore_eos": True}
        request = urllib.request.Request(cluster.http_url + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert post(MAX_QUEUE + 1, 2)[0] == 429
    start = time.monotonic()
    status, body = post(2, 1000)
    assert (status, body["error"]["code"]) == (504, "deadline_exceeded")
    assert time.monotonic() - start < TIMEOUT_S + 1.0
    assert post(MAX_QUEUE, 2)[0] == 200  # every slot free again
    for _, node in cluster.nodes:
        assert used_blocks_settle_to_zero(node.address, timeout_s=5)
