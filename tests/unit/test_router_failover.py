"""The orchestrator's failover against scripted fake nodes on loopback (gRPC, health included).

A fake node "generates" token n of every request as BASE + n, so a correct continuation (prompt
plus the tokens sent, num_prior_output_tokens = their number) yields the same stream whatever
node finishes it. Fakes fail on cue: a Reserve refused, a Decode stream cut after k tokens
with the node then reporting NOT_SERVING, as a killed process would look.
"""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from splitserve.api.v1 import common_pb2, node_pb2, node_pb2_grpc
from splitserve.engine import SamplingParams, Tokenizer
from splitserve.rpc.server import GrpcServer
from router.front.completion import Finish, Piece, completion
from router.cluster.failover import RetryConfig
from router.cluster.health import NODE_SERVICE, HealthConfig
from router.metrics import RouterMetrics
from router.cluster.nodes import NodeRegistry
from router.cluster.orchestrator import Done, Job, NodeCallError, Orchestrator, Tokens
from router.cluster.policies import split_or_colocated

PROMPT = list(range(10, 30))
BASE = 300  # the tiny tokenizer's 300..309: 'ing' 'ro' 'il' ' to' 'ent' 'el' ' g' 'am' 'st' ' re'


class FakeNode(node_pb2_grpc.NodeServicer):
    def __init__(self, role: str, refuse: bool = False, die_after: int | None = None):
        self.role, self.refuse, self.die_after = role, refuse, die_after
        self.calls: list[tuple[str, object]] = []
        self.server = GrpcServer("127.0.0.1", 0, [NODE_SERVICE])
        node_pb2_grpc.add_NodeServicer_to_server(self, self.server.server)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def Reserve(self, request, context):
        self.calls.append(("Reserve", request))
        if self.refuse:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "not enough free KV blocks")
        return node_pb2.ReserveReply(target=node_pb2.KVTarget(node_id=self.role, kv_address=self.address,
                                                              transport="grpc"), num_blocks=2)

    async def Prefill(self, request, context):
        self.calls.append(("Prefill", request))
        return node_pb2.PrefillReply(first_token_id=BASE + request.num_prior_output_tokens, finish_reason="prefilled")

    async def Decode(self, request, context):
        self.calls.append(("Decode", request))
        first, last = request.num_prior_output_tokens + 1, request.sampling.max_tokens - 1
        for i, n in enumerate(range(first, last + 1)):
            if self.die_after is not None and i == self.die_after:
                await self.server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
            yield node_pb2.TokenChunk(token_ids=[BASE + n], finished=n == last, finish_reason="length" if n == last else "")

    async def Abort(self, request, context):
        self.calls.append(("Abort", request))
        return common_pb2.AbortReply(found=True)

    async def Stats(self, request, context):
        return node_pb2.NodeStats(node_id=self.role, role=self.role, num_total_blocks=100, num_free_blocks=100,
                                  block_size=16)


def run_job(specs: list[dict], retry: RetryConfig = RetryConfig(backoff_s=0.001), stop=(), tokenizer=None,
            **params):
    """Runs one 10-token job over fake nodes made from specs; returns (events, metrics, nodes).
    With a tokenizer, the events are router/front/completion.py's text pieces (stop strings applied)."""
    nodes = []
    try:
        return asyncio.run(_run_job(specs, retry, nodes, stop, tokenizer, params))
    except NodeCallError as exc:
        exc.nodes = nodes
        raise


async def _run_job(specs: list[dict], retry: RetryConfig, nodes: list, stop, tokenizer, params: dict):
    nodes += [FakeNode(**spec) for spec in specs]
    for node in nodes:
        await node.server.start()
    registry = NodeRegistry(HealthConfig(timeout_s=5.0))  # a first health call on 2 loaded cores can pass 0.5 s
    for node in nodes:
        registry.add(node.role.rstrip("0123456789"), node.address)
    await registry.refresh()
    metrics = RouterMetrics()
    orchestrator = Orchestrator(registry, first_listed, retry=retry, metrics=metrics)
    job = Job("req-1", PROMPT, SamplingParams(max_tokens=10, seed=7, temperature=0.9, stop=tuple(stop), **params))
    route = orchestrator.route(job)
    events = []
    try:
        stream = completion(tokenizer, orchestrator, job, route) if tokenizer else orchestrator.run(job, route)
        async for event in stream:
            events.append(event)
    finally:
        await registry.close()
        for node in nodes:
            await node.server.stop(0)
    return events, metrics, nodes


def first_listed(nodes, request):
    """The first healthy node of each role in the order they were added: the failing fakes go first."""
    first = lambda ns: ns[0]
    return split_or_colocated(nodes, first, first, first)


def tokens(events) -> list[int]:
    return [t for e in events if isinstance(e, Tokens) for t in e.token_ids]


def test_a_continuation_asks_no_prompt_logprobs_again():
    """They went out with the first token: the continuation's prompt holds output tokens too."""
    _, _, nodes = run_job([dict(role="prefill"), dict(role="decode1", die_after=4), dict(role="decode2")],
                          prompt_logprobs=2)
    prefill = nodes[0]
    first, retry = [r.sampling for call, r in prefill.calls if call == "Prefill"]
    assert first.HasField("prompt_logprobs") and not retry.HasField("prompt_logprobs")
    decodes = [r.sampling for node in nodes[1:] for call, r in node.calls if call == "Decode"]
    assert decodes and not any(d.HasField("prompt_logprobs") for d in decodes)  # the prefill node scores the prompt


def test_a_decode_stream_cut_after_5_tokens_continues_on_another_pair():
    events, metrics, (prefill, dying, spare) = run_job([dict(role="prefill"), dict(role="decode1", die_after=4),
                                                         dict(role="decode2")])
    assert tokens(events) == [BASE + n for n in range(10)]  # nothing lost, nothing twice
    assert isinstance(events[-1], Done) and events[-1].route.decode.address == spare.address
    retry = [r for call, r in prefill.calls if call == "Prefill"][1]
    assert list(retry.prompt_token_ids) == PROMPT + [BASE + n for n in range(5)]
    assert retry.num_prior_output_tokens == 5 and retry.sampling.max_tokens == 10 and retry.sampling.seed == 7
    assert retry.request_id == "req-1.retry1"
    decode = [r for call, r in spare.calls if call == "Decode"][0]
    assert decode.first_token_id == BASE + 5 and decode.num_prior_output_tokens == 5
    assert metrics.failovers.labels("UNAVAILABLE")._value.get() == 1


def test_a_stop_string_spanning_the_failover_is_still_found(tiny_model):
    # 5 tokens go out ('ing' 'ro' 'il' ' to' 'ent'), then the stream is cut; "entel g" spans the cut
    specs = [dict(role="prefill"), dict(role="decode1", die_after=4), dict(role="decode2")]
    events, _, _ = run_job(specs, stop=["entel g"], tokenizer=Tokenizer.from_dir(tiny_model))
    assert "".join(e.text for e in events if isinstance(e, Piece)) == "ingroil to"
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop"


def test_a_refused_reservation_tries_another_decode_node():
    events, metrics, (prefill, full, spare) = run_job([dict(role="prefill"), dict(role="decode1", refuse=True),
                                                        dict(role="decode2")])
    assert tokens(events) == [BASE + n for n in range(10)]
    assert [call for call, _ in full.calls] == ["Reserve"]
    assert metrics.node_errors.labels("Reserve", "RESOURCE_EXHAUSTED")._value.get() == 1


def test_bounded_retries_then_a_clear_error():
    with pytest.raises(NodeCallError) as err:
        run_job([dict(role="prefill"), dict(role="decode1", refuse=True)], RetryConfig(max_retries=2, backoff_s=0.001))
    full = err.value.nodes[1]
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "failed after" in str(err.value) and "not enough free KV blocks" in str(err.value)
    assert [call for call, _ in full.calls] == ["Reserve", "Reserve"]  # then no route is left: give up


def test_retry_config_is_validated_and_backs_off_exponentially():
    config = RetryConfig(max_retries=5, backoff_s=0.1, max_backoff_s=0.5)
    assert [config.backoff(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    with pytest.raises(ValueError, match="max_retries"):
        RetryConfig(max_retries=-1)
