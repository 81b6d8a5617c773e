"""What the fuzz tests share: the cluster's flags, raw gRPC calls, the allowed outcomes, health checks.

Raw calls send bytes with identity serializers, so a test controls every byte on the wire.
A fuzzed call must end with a status a client can act on (or OK); UNKNOWN and INTERNAL mean
an unhandled exception, DEADLINE_EXCEEDED here means a hang (our own timeout ran out).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import grpc
from hypothesis import HealthCheck, settings

from splitserve.client import Client
from tests.support.cluster import used_blocks_settle_to_zero

KEY = "sk-fuzz-0123456789"
AUTH = (("authorization", f"Bearer {KEY}"),)
NODE_ARGS = ["--num-blocks=128", "--transfer-timeout-s=5", "--kv-checksum", "--chunk-cache-bytes=1",
             "--blend-ratio=1.0", "--chunk-planning=ratio"]  # Redis only; blended prefills equal plain ones
ROUTER = "/splitserve.api.v1.Router/"
NODE = "/splitserve.api.v1.Node/"
PUSH_KV = "/splitserve.api.v1.KVTransfer/PushKV"
ROUTER_METHODS = {"Generate": True, "Abort": False, "Embed": False}  # method -> server-streaming
NODE_METHODS = {"Prefill": False, "Reserve": False, "Decode": True, "Generate": True, "Abort": False, "Stats": False,
                "IngestDocuments": False, "Embed": False}
CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
RELEASE_S = 20.0  # a fuzzed Reserve that got blocks holds them until it expires (2 x --transfer-timeout-s)


# `make test` draws the same examples every run (a CI failure can be rerun as it was);
# SPLITSERVE_FUZZ_RANDOM=1 explores new ones.
DERANDOMIZE = os.environ.get("SPLITSERVE_FUZZ_RANDOM", "") in ("", "0")


def fuzz_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=DERANDOMIZE,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    replies: list[bytes]

    def is_clear(self) -> bool:
        """A status the client can act on; UNAVAILABLE only for a KV transfer to a fuzzed target."""
        return self.code in CLEAR or (self.code == grpc.StatusCode.UNAVAILABLE
                                      and self.details.startswith("KV transfer failed"))


@functools.lru_cache(maxsize=None)
def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address.removeprefix("grpc://"))


def call(address: str, method: str, payload: bytes, stream: bool = False, timeout_s: float = 60.0,
         metadata=AUTH) -> Outcome:
    """One raw call: payload is the serialized request (any bytes)."""
    channel = _channel(address)
    rpc = channel.unary_stream(method) if stream else channel.unary_unary(method)
    try:
        reply = rpc(payload, timeout=timeout_s, metadata=metadata)
        return Outcome(grpc.StatusCode.OK, "", list(reply) if stream else [reply])
    except grpc.RpcError as err:
        return Outcome(err.code(), err.details() or "", [])


def push_kv(address: str, chunks: list[bytes], timeout_s: float = 30.0) -> Outcome:
    rpc = _channel(address).stream_unary(PUSH_KV)
    try:
        return Outcome(grpc.StatusCode.OK, "", [rpc(iter(chunks), timeout=timeout_s)])
    except grpc.RpcError as err:
        return Outcome(err.code(), err.details() or "", [])


def node(cluster, role: str):
    return next(service for r, service in cluster.nodes if r == role)


def assert_healthy(cluster) -> None:
    """Every process alive, a normal request completes, every KV pool back to zero used blocks."""
    assert [s.name for s in cluster.services() if not s.alive()] == []
    with Client(cluster.url, api_key=KEY, timeout_s=60) as client:
        assert len(client.complete(prompt="hello there", max_tokens=4, ignore_eos=True).token_ids) == 4
    for role, service in cluster.nodes:
        assert used_blocks_settle_to_zero(service.address, RELEASE_S), f"{role} node kept KV blocks"
