"""`--cache-salt-per-key` with real processes (router, prefill and decode nodes, tiny model): a prompt one API key
sent is a prefix-cache hit for that key only, over HTTP (the `openai` client) and gRPC; a cache_salt a client sends
is salted by its key too."""

from __future__ import annotations

import openai
import pytest

from splitserve.client import Client
from tests.support.cluster import ParallelCluster

pytestmark = pytest.mark.slow
MODEL = "tiny-s0-v1"
KEYS = ("sk-tenant-a", "sk-tenant-b")


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text("\n".join(KEYS) + "\n")
    with ParallelCluster(tiny_model, http_port=-1, router_args=["--api-keys-file", str(keys),
                                                                "--cache-salt-per-key"]) as c:
        yield c


def prompt(tag: str) -> str:
    return f"Tenant prompt {tag}: " + " ".join(f"word{i}" for i in range(60))


def cached_http(cluster, key: str, text: str, **extra) -> int:
    with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key=key, max_retries=0) as api:
        usage = api.completions.create(model=MODEL, prompt=text, max_tokens=2, extra_body=extra).usage
    return usage.prompt_tokens_details.cached_tokens


def cached_grpc(cluster, key: str, text: str) -> int:
    with Client(cluster.url, timeout_s=60, api_key=key) as client:
        return client.complete(prompt=text, max_tokens=2).final.cached_tokens


def test_a_cached_prompt_is_a_hit_for_its_own_key_only(cluster):
    text = prompt("http")
    assert cached_http(cluster, KEYS[0], text) == 0 and cached_http(cluster, KEYS[0], text) > 0
    assert cached_http(cluster, KEYS[1], text) == 0 and cached_http(cluster, KEYS[1], text) > 0
    text = prompt("grpc")
    assert cached_grpc(cluster, KEYS[0], text) == 0 and cached_grpc(cluster, KEYS[0], text) > 0
    assert cached_grpc(cluster, KEYS[1], text) == 0
    assert cached_http(cluster, KEYS[0], text) > 0  # one key, one cache over both fronts


def test_a_client_salt_stays_inside_its_key(cluster):
    text = prompt("salted")
    assert cached_http(cluster, KEYS[0], text, cache_salt="shared") == 0
    assert cached_http(cluster, KEYS[1], text, cache_salt="shared") == 0  # the same salt, another key: a miss
    assert cached_http(cluster, KEYS[0], text, cache_salt="shared") > 0
    assert cached_http(cluster, KEYS[0], text) == 0  # its key without the salt: another cache again


def test_embeddings_are_salted_by_key_too(cluster):
    """An embedding's prompt lands in its key's cache (a completion of the same key finds it), never another's."""
    text = prompt("embedded")
    with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key=KEYS[0], max_retries=0) as api:
        api.embeddings.create(model=MODEL, input=text)
    assert cached_http(cluster, KEYS[1], text) == 0
    assert cached_http(cluster, KEYS[0], text) > 0
    text = prompt("embedded-grpc")
    with Client(cluster.url, timeout_s=60, api_key=KEYS[1]) as client:
        client.embed([text])
    assert cached_grpc(cluster, KEYS[0], text) == 0 and cached_grpc(cluster, KEYS[1], text) > 0
