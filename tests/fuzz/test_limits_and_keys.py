"""Message size limits and API keys, against the real servers of the fuzz cluster.

A gRPC message over the limit (splitserve.grpc_util.MAX_MESSAGE_BYTES) gets RESOURCE_EXHAUSTED
from the router, from a node and from a node's KV receiver; an HTTP body over the router's
--max-request-bytes gets 413, on every POST route; every method of the Router service and
every HTTP route but the probes' refuse a caller without a valid key. Afterwards the cluster
is healthy. (Keys on Generate, TLS and mTLS: tests/integration/test_router_security.py.)
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import grpc
import pytest

from router.front.auth import ApiKeys
from router.front.intake import Frontend
from router.front.http_api import DEFAULT_MAX_BODY_BYTES, HttpContext, create_app
from prefill_node.servicer import MAX_INGEST_DOCUMENTS
from splitserve.api.v1 import common_pb2, node_pb2, router_pb2
from splitserve.grpc_util import MAX_MESSAGE_BYTES
from tests.fuzz.harness import AUTH, KEY, NODE, ROUTER, assert_healthy, call, node, push_kv
from tests.fuzz.strategies import length_delimited

pytestmark = pytest.mark.slow
# probes and Prometheus scrapers (router/front/http_api.py documents both as keyless); /metrics and
# FastAPI's /openapi.json are not in the schema this test reads the routes from
OPEN_ROUTES = {"/health", "/ping", "/version", "/metrics"}
OVER_LIMIT = length_delimited(2, b"a" * (MAX_MESSAGE_BYTES + 1))  # field 2 (prompt / prompt_token_ids / data)


@pytest.mark.parametrize("target, method, stream", [
    ("router", ROUTER + "Generate", True), ("mixed", NODE + "Generate", True), ("prefill", NODE + "Prefill", False),
    ("decode", NODE + "Reserve", False)])
def test_grpc_messages_over_the_limit_are_resource_exhausted(cluster, target, method, stream):
    address = cluster.url if target == "router" else node(cluster, target).address
    outcome = call(address, method, OVER_LIMIT, stream)
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Received message larger" in outcome.details, outcome


def test_a_kv_chunk_over_the_limit_is_resource_exhausted(cluster):
    outcome = push_kv(node(cluster, "decode").address, [OVER_LIMIT])
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Received message larger" in outcome.details, outcome


def _post(cluster, path: str, send) -> tuple[int, dict]:
    url = urlsplit(cluster.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        send(conn, path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _declared(conn, path: str) -> None:
    """Headers that announce a body over the limit; the body never comes."""
    conn.putrequest("POST", path)
    for name, value in {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}",
                        "Content-Length": str(DEFAULT_MAX_BODY_BYTES + 1)}.items():
        conn.putheader(name, value)
    conn.endheaders()


def _chunked(conn, path: str) -> None:
    """A chunked body (no length announced) that grows past the limit."""
    conn.putrequest("POST", path)
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(DEFAULT_MAX_BODY_BYTES // len(chunk) + 2):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except OSError:  # the server answered 413 and closed before the rest went out
        pass


def _app_routes() -> list[tuple[str, str]]:
    """(METHOD, path) of every route in the router's HTTP app, from its OpenAPI schema (nothing is served)."""
    frontend = Frontend.__new__(Frontend)
    frontend.tokenizer = None  # the app only keeps it
    app = create_app(HttpContext(frontend, None, None, ApiKeys(["k"]), "m"))
    return [(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item]


def error_code(path: str, body: dict) -> str:
    """OpenAI's error `code`, or the `type` of Anthropic's error shape (its Messages API)."""
    return body["error"]["type"] if path.startswith("/v1/messages") else body["error"]["code"]


@pytest.mark.parametrize("send", [_declared, _chunked], ids=["content-length", "chunked"])
def test_http_bodies_over_the_limit_are_413_on_every_post_route(cluster, send):
    posts = [path for method, path in _app_routes() if method == "POST"]
    assert posts, "no POST routes found"
    for path in posts:
        status, body = _post(cluster, path, send)
        assert status == 413 and error_code(path, body) == "request_too_large", (path, status, body)


def test_every_http_route_but_the_probes_needs_a_key(cluster):
    routes = [(method, path) for method, path in _app_routes() if path not in OPEN_ROUTES]
    assert len(routes) >= 3
    url = urlsplit(cluster.http_url)
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}, {"x-api-key": "sk-wrong"}):
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            conn.request(method, path, b"{}" if method == "POST" else None, headers)
            response = conn.getresponse()
            assert response.status == 401, (method, path, headers, response.status)
            expected = "authentication_error" if path.startswith("/v1/messages") else "invalid_api_key"
            assert error_code(path, json.loads(response.read())) == expected
            conn.close()


ROUTER_METHODS = [m.name for m in router_pb2.DESCRIPTOR.services_by_name["Router"].methods]


@pytest.mark.parametrize("method", ROUTER_METHODS)
@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer sk-wrong"),), (("authorization", KEY),)],
                         ids=["missing", "wrong", "no-scheme"])
def test_every_router_method_refuses_a_caller_without_a_valid_key(cluster, method, metadata):
    generate = method == "Generate"
    request = {"Generate": router_pb2.GenerateRequest(prompt="hi"), "Abort": common_pb2.AbortRequest(request_id="x"),
               "Embed": router_pb2.EmbedRequest(inputs=[router_pb2.EmbedInput(text="hi")])}[method]
    outcome = call(cluster.url, ROUTER + method, request.SerializeToString(), generate, metadata=metadata)
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, outcome


def test_abort_with_the_key_answers(cluster):
    outcome = call(cluster.url, ROUTER + "Abort", common_pb2.AbortRequest(request_id="x").SerializeToString(),
                   metadata=AUTH)
    assert outcome.code == grpc.StatusCode.OK


def test_ingest_takes_at_most_max_ingest_documents_per_call(cluster):
    request = node_pb2.IngestRequest(documents=["word"] * (MAX_INGEST_DOCUMENTS + 1))
    outcome = call(node(cluster, "mixed").address, NODE + "IngestDocuments", request.SerializeToString())
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT and "send them in batches" in outcome.details, outcome


def test_limits_leave_the_cluster_healthy(cluster):
    assert_healthy(cluster)
