"""The router under bursts of clients. Its open-files limit: it raises a low soft limit at startup,
and when descriptors run out anyway (a hard limit it cannot pass) it keeps serving, says so in one
line instead of asyncio's traceback per failed accept, and counts the failures in a metric. Its
gRPC front: thousands of calls at once end with the codes the README promises, never CANCELLED."""

from __future__ import annotations

import asyncio
import collections
import resource
import socket
import sys
import time
import urllib.request

import grpc
import pytest

from splitserve.api.v1 import common_pb2, router_pb2, router_pb2_grpc
from splitserve.localcluster.procs import service_command, spawn, stop
from splitserve.runtime.open_files import TARGET
from tests.support.metrics import scrape


def router_with_limits(tiny_model, soft: int, hard: int, *flags: str):
    """A router (no nodes) started with RLIMIT_NOFILE = (soft, hard)."""
    command = service_command("router", "--model", str(tiny_model), "--port", "0", "--http-port", "-1", "--nodes", "",
                              *flags)
    launcher = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); "
                "os.execv(sys.argv[1], sys.argv[1:])" % (soft, hard))
    return spawn("router", [sys.executable, "-c", launcher, *command])


def soft_limit_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def get(url: str, timeout_s: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.status


def test_router_raises_a_low_soft_limit_to_the_hard_one(tiny_model):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard open-files limit {hard}: nothing to raise to")
    router = router_with_limits(tiny_model, 256, hard)
    try:
        want = TARGET if hard == resource.RLIM_INFINITY else min(hard, TARGET)
        assert soft_limit_of(router.proc.pid) == want
        assert not any("open-files limit" in line for line in router.output)
    finally:
        stop([router])


def test_router_out_of_descriptors_logs_one_line_and_recovers(tiny_model):
    router = router_with_limits(tiny_model, 64, 64)
    clients: list[socket.socket] = []
    try:
        http = router.extra["http"]
        host, port = http.rsplit("/", 1)[-1].rsplit(":", 1)
        assert any("open-files limit 64" in line for line in router.output)  # the startup warning
        for _ in range(120):  # more connections than descriptors, each holding one once accepted
            client = socket.create_connection((host, int(port)), timeout=5)
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open
            clients.append(client)
        time.sleep(2.5)  # accepts fail, asyncio retries every second
        lines = list(router.output)
        assert sum("out of file descriptors" in line for line in lines) == 1
        assert not any("Traceback" in line or "out of system resource" in line for line in lines)
        for client in clients:
            client.close()
        clients.clear()
        deadline = time.monotonic() + 15
        while True:  # the router accepts again once descriptors are free
            try:
                assert get(http + "/health") == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        failed = [v for name, _, v in scrape(http + "/metrics") if name == "splitserve_router_accept_errors_total"]
        assert failed and failed[0] >= 1
        assert router.alive()
    finally:
        for client in clients:
            client.close()
        stop([router])


async def generate_codes(address: str, n: int) -> collections.Counter:
    """n Generate calls at once on one channel (a plain stub): how many ended with each code."""
    codes: collections.Counter = collections.Counter()
    request = router_pb2.GenerateRequest(prompt_token_ids=router_pb2.TokenIds(ids=[5, 6, 7]),
                                         sampling=common_pb2.SamplingParams(max_tokens=4))

    async def one(stub) -> None:
        try:
            async for _ in stub.Generate(request, timeout=60):
                pass
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        await asyncio.gather(*(one(stub) for _ in range(n)))
    return codes


def test_a_burst_of_grpc_calls_gets_the_promised_codes_never_cancelled(tiny_model):
    # gRPC's own pending-call limit (1,000 by default) cancelled about 200 of 2,000 such calls
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    router = router_with_limits(tiny_model, hard, hard, "--max-queue", "64")
    try:
        codes = asyncio.run(generate_codes(router.url.removeprefix("grpc://"), 2000))
        assert sum(codes.values()) == 2000
        assert set(codes) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}, codes  # no node / the router is full
    finally:
        stop([router])


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes sock (recv returns b"") within `seconds`; any answer bytes are read past."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False


def test_a_request_that_does_not_arrive_in_time_loses_its_connection(tiny_model):
    # slowloris: uvicorn alone kept a silent connection, or one sending its headers a byte at a time, for ever
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    router = router_with_limits(tiny_model, hard, hard, "--http-read-timeout-s", "1")
    try:
        host, port = router.extra["http"].rsplit("/", 1)[-1].rsplit(":", 1)
        connect = lambda: socket.create_connection((host, int(port)), timeout=5)  # noqa: E731
        silent, partial, slow_body, quick = connect(), connect(), connect(), connect()
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        body = b'{"prompt": "x"}'
        head = b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        slow_body.sendall(head % len(body) + body[:5])
        quick.sendall(head % len(body) + body[:5])
        time.sleep(0.3)
        quick.sendall(body[5:])  # within the deadline: answered, as a request always is
        quick.settimeout(5)
        assert quick.recv(100).startswith(b"HTTP/1.1 ")
        for sock in (silent, partial, slow_body):
            assert closed_within(sock, 5)
        assert get(router.extra["http"] + "/health") == 200
    finally:
        stop([router])
