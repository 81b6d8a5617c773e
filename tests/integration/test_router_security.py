"""API keys, TLS on the router's public ports and mTLS between router and nodes, with real
processes: certificates from `splitserve certs`, keys from `--api-keys-file`."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request

import grpc
import openai
import pytest

from splitserve.api.v1 import node_pb2, node_pb2_grpc
from splitserve.client import Client
from splitserve.devcerts import make_dev_certs
from tests.support.cluster import ParallelCluster
from splitserve.localcluster.procs import service_command, spawn, stop
from splitserve.tls import channel_credentials

pytestmark = pytest.mark.slow
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tls")
    make_dev_certs(out)
    return out


@pytest.fixture(scope="module")
def cluster(tiny_model, certs, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# one key per line\n{KEY}\n\nsk-other\n")
    with ParallelCluster(tiny_model, http_port=-1, node_args=["--tls-dir", str(certs)],
                         router_args=["--tls-dir", str(certs), "--api-keys-file", str(keys)]) as c:
        yield c


def https_get(url: str, ca, headers: dict | None = None) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl.create_default_context()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10,
                                    context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def openai_client(cluster, certs, key: str) -> openai.OpenAI:
    http_client = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(certs / "ca.pem")))
    return openai.OpenAI(base_url=cluster.http_url + "/v1", api_key=key, max_retries=0, timeout=30,
                         http_client=http_client)


def test_https_with_the_dev_ca_and_a_key(cluster, certs):
    assert cluster.http_url.startswith("https://")
    with openai_client(cluster, certs, KEY) as api:
        response = api.completions.create(model="tiny-s0-v1", prompt="hello", max_tokens=3, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 3


def test_wrong_or_missing_key_is_401(cluster, certs):
    with openai_client(cluster, certs, "sk-wrong") as api:
        with pytest.raises(openai.AuthenticationError) as err:
            api.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    status, body = https_get(cluster.http_url + "/v1/models", certs / "ca.pem")
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    status, _ = https_get(cluster.http_url + "/v1/models", certs / "ca.pem", {"Authorization": f"Bearer {KEY}"})
    assert status == 200


def test_anthropic_clients_send_their_key_as_x_api_key(cluster, certs):
    import anthropic

    def client(key: str) -> anthropic.Anthropic:
        verify = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        return anthropic.Anthropic(base_url=cluster.http_url, api_key=key, max_retries=0, timeout=30,
                                   http_client=anthropic.DefaultHttpxClient(verify=verify))

    message = client(KEY).messages.create(model="tiny-s0-v1", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert message.usage.output_tokens >= 1
    with pytest.raises(anthropic.AuthenticationError) as err:
        client("sk-wrong").messages.create(model="tiny-s0-v1", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert err.value.body == {"type": "error", "error": {"type": "authentication_error", "message": err.value.body[
        "error"]["message"]}}


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_api_description_needs_a_key_as_the_api_does(cluster, certs, path):
    ca, url = certs / "ca.pem", cluster.http_url + path
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        status, body = https_get(url, ca, headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cafile=str(ca))) as response:
        status, content = response.status, response.read()
    assert status == 200 and b"openapi" in content  # the schema, or a page that loads it


def test_the_tokenizer_needs_a_key_as_the_api_does(cluster, certs):
    ca, url = certs / "ca.pem", cluster.http_url + "/tokenizer_info"
    assert https_get(url, ca)[0] == 401
    assert https_get(url, ca, {"Authorization": f"Bearer {KEY}"})[0] == 200


def test_health_needs_no_key(cluster, certs):
    assert https_get(cluster.http_url + "/health", certs / "ca.pem")[0] == 200


def test_plaintext_http_and_unknown_ca_fail(cluster):
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        urllib.request.urlopen(cluster.http_url.replace("https://", "http://") + "/health", timeout=10).read()
    with pytest.raises(urllib.error.URLError) as err:
        https_get(cluster.http_url + "/health", None)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)


def test_grpc_with_tls_and_key(cluster, certs):
    with Client(cluster.url, api_key=KEY, ca_file=str(certs / "ca.pem"), timeout_s=30) as client:
        assert len(client.complete(prompt="hello", max_tokens=3, ignore_eos=True).token_ids) == 3


@pytest.mark.parametrize("key", [None, "sk-wrong"], ids=["missing", "wrong"])
def test_grpc_without_a_valid_key_is_unauthenticated(cluster, certs, key):
    with Client(cluster.url, api_key=key, ca_file=str(certs / "ca.pem"), timeout_s=30) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.complete(prompt="hello", max_tokens=3)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_plaintext_client_fails(cluster):
    with Client(cluster.url, api_key=KEY, timeout_s=5) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.complete(prompt="hello", max_tokens=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def _node_stats(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    try:
        node_pb2_grpc.NodeStub(channel).Stats(node_pb2.StatsRequest(), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()
    finally:
        channel.close()


def test_nodes_under_mtls_refuse_callers_without_a_client_certificate(cluster, certs):
    ca = certs / "ca.pem"
    for _, node in cluster.nodes:
        assert _node_stats(node.address, None) == grpc.StatusCode.UNAVAILABLE
        assert _node_stats(node.address, channel_credentials(ca)) == grpc.StatusCode.UNAVAILABLE
        with_cert = channel_credentials(ca, certs / "router.pem", certs / "router-key.pem")
        assert _node_stats(node.address, with_cert) == grpc.StatusCode.OK


def test_a_router_without_a_client_certificate_cannot_use_the_nodes(tiny_model, cluster, certs):
    """A second router, public TLS but plaintext to the same mTLS nodes: they refuse it, it has no route."""
    nodes = ",".join(f"{role}={n.address}" for role, n in cluster.nodes)
    router = spawn("router-plaintext-nodes", service_command(
        "router", "--model", str(tiny_model), "--port", "0", "--http-port", "0", "--nodes", nodes,
        "--tls-dir", str(certs), "--plaintext-nodes"))
    try:
        with Client(router.url, ca_file=str(certs / "ca.pem"), timeout_s=10) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.complete(prompt="hello", max_tokens=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop([router])
