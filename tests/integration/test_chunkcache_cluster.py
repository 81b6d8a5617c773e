"""The chunk cache through real clusters with a real Redis: documents from the router to the
nodes, misses stored off the request path, blended prefills, ingest, and Redis dying mid-load."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys

import pytest
import redis

from router.front.intake import Frontend
from splitserve.bench import traces
from splitserve.client import AsyncClient, Client
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.redis_server import RedisServer
from tests.support.cluster import ParallelCluster, node_stats, used_blocks_settle_to_zero, wait_until

pytestmark = pytest.mark.slow
TRACE = traces.data_file(traces.MUSIQUE_FILE)  # shipped in the package
NODE_ARGS = ["--transfer-timeout-s=10", "--kv-checksum"]


def _documents(n: int, offset: int = 0) -> list[str]:
    ctxs = [c["text"] for q in json.loads(TRACE.read_text())[:4] for c in q["ctxs"]]
    return [c[:400] for c in ctxs[offset:offset + n]]


def _reference(model, question: str, docs: list[str], max_tokens: int = 8, messages: list[dict] | None = None,
               kv_cache_dtype: str = "auto") -> list[int]:
    prompt = None if messages else question
    ids, _ = Frontend.from_model_dir(model).prompt_and_chunks(prompt=prompt, messages=messages, documents=docs)
    engine = Engine(model, EngineConfig(kv_cache_dtype=kv_cache_dtype))
    return engine.generate([ids], SamplingParams(max_tokens=max_tokens, ignore_eos=True))[0].token_ids


def _prefill_address(cluster) -> str:
    return next(s.address for role, s in cluster.nodes if role in ("prefill", "mixed"))


@pytest.mark.parametrize("kv_dtype", ["auto", "float16"])
def test_documents_blend_and_ingest_through_a_disaggregated_cluster(tiny_model, redis_url, tmp_path, kv_dtype):
    """With --kv-cache-dtype float16 the chunks are kept (and keyed in Redis) in float16 too."""
    docs, question = _documents(3), "which of these is the oldest?"
    expected = _reference(tiny_model, question, docs, kv_cache_dtype=kv_dtype)
    node_args = [*NODE_ARGS, f"--kv-cache-dtype={kv_dtype}"]
    with ParallelCluster(tiny_model, prefill=1, decode=1, node_args=node_args, redis_url=redis_url) as cluster:
        prefill = _prefill_address(cluster)
        with Client(cluster.url, timeout_s=60) as client:
            first = client.complete(prompt=question, documents=docs, max_tokens=8, ignore_eos=True)
            assert first.token_ids == expected  # every chunk missed: the plain path
            assert wait_until(lambda: node_stats(prefill).chunk_cache.num_local_chunks == 3, 30)
            blended = client.complete(prompt=question, documents=docs[::-1], max_tokens=8, ignore_eos=True)
            assert len(blended.token_ids) == 8 and blended.final.cached_tokens > 0
            stats = node_stats(prefill)
            assert stats.chunk_cache.blended_requests == 1 and stats.chunk_cache.local_hits == 3
            assert 0 < stats.chunk_cache.recompute_fraction < 1 and len(stats.chunk_keys) == 3

            (tmp_path / "docs.json").write_text(json.dumps(docs))
            done = subprocess.run([sys.executable, "-m", "splitserve.cli", "ingest", "--url", f"grpc://{prefill}",
                                   "--in-context", str(tmp_path / "docs.json")], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            # ingest computes after the chat head a chat request puts before its documents: reused as they are
            messages = [{"role": "user", "content": question}]
            exact = client.complete(messages=messages, documents=docs, max_tokens=8, ignore_eos=True)
            assert exact.token_ids == _reference(tiny_model, question, docs, messages=messages, kv_cache_dtype=kv_dtype)
        assert redis.Redis.from_url(redis_url).keys(f"ss:cc:v1:*:{'float32' if kv_dtype == 'auto' else kv_dtype}:*")
        for _, node in cluster.nodes:
            assert used_blocks_settle_to_zero(node.address)


async def _load(url: str, docs: list[str], n: int, on_half, concurrency: int = 4) -> list:
    rng, gate = random.Random(0), asyncio.Semaphore(concurrency)
    async with AsyncClient(url, timeout_s=120) as client:
        async def one(i: int):
            async with gate:
                if i == n // 2:
                    on_half()
                picked = rng.sample(docs, 3)
                return await client.complete(prompt=f"question {i}?", documents=picked, max_tokens=4, ignore_eos=True)
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_redis_killed_during_a_load_run(tiny_model):
    server = RedisServer().start()
    try:
        docs = _documents(6)
        with LocalCluster(tiny_model, prefill=0, decode=0, colocated=1, node_args=NODE_ARGS,
                          redis_url=server.url) as cluster:
            node = _prefill_address(cluster)
            results = asyncio.run(_load(cluster.url, docs, 16, server.stop))
            assert [len(r.token_ids) for r in results] == [4] * 16
            assert any(r.final.cached_tokens > 0 for r in results)  # blended on the mixed node, reported
            assert node_stats(node).chunk_cache.redis_errors > 0
            server.start()  # same port, empty: the store must find it again
            offsets = iter(range(10, 40))
            with Client(cluster.url, timeout_s=60) as client:
                def stored_again() -> bool:  # each try brings a new document: its miss is stored
                    client.complete(prompt="again?", documents=_documents(1, next(offsets)), max_tokens=2)
                    return len(redis.Redis.from_url(server.url).keys("ss:cc:v1:*:m")) >= 1
                assert wait_until(stored_again, 30, interval_s=1.0)
            assert used_blocks_settle_to_zero(node)
    finally:
        server.stop()
