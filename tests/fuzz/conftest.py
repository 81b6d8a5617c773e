"""One cluster for the whole fuzz package (starting one costs seconds): a router with an API key
and its HTTP API (its file storage as large as a request body, so that an upload over it is a 413 like any
other body), a prefill, a decode and a mixed node, KV over gRPC with checksums, and the
session's Redis as the chunk cache's only tier when redis-server is installed."""

from __future__ import annotations

import shutil

import pytest

from router.front.http_api import DEFAULT_MAX_BODY_BYTES
from tests.support.cluster import ParallelCluster
from tests.fuzz.harness import KEY, NODE_ARGS


@pytest.fixture(scope="package")
def fuzz_redis_url(request):
    if shutil.which("redis-server") is None:
        return None
    return request.getfixturevalue("redis_server").url


@pytest.fixture(scope="package")
def cluster(tiny_model, fuzz_redis_url, tmp_path_factory):
    keys = tmp_path_factory.mktemp("fuzz-keys") / "api-keys"
    keys.write_text(KEY + "\n")
    with ParallelCluster(tiny_model, prefill=1, decode=1, colocated=1, transport="grpc", http_port=-1,
                         node_args=NODE_ARGS, router_args=["--api-keys-file", str(keys),
                                                               "--batch-storage-bytes", str(DEFAULT_MAX_BODY_BYTES)],
                         redis_url=fuzz_redis_url) as c:
        yield c
