"""Malformed chunk-cache values and metadata in a real Redis: each is a miss (deleted where the tier
detects it), never an exception and never a wrong tensor; and a node serving documents whose
values were corrupted returns what it returns with a clean cache."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import pytest
import redis
import torch
from hypothesis import given
from hypothesis import strategies as st

from router.front.intake import Frontend
from splitserve.chunkcache.blend import BlendConfig
from splitserve.chunkcache.documents import document_prompt
from splitserve.chunkcache.format import HEADER_BYTES, ChunkKV, CorruptValue, encode
from splitserve.chunkcache.keys import content_hash, model_fingerprint
from splitserve.chunkcache.redis_tier import RedisTier
from splitserve.chunkcache.runner import ChunkCache, ChunkCacheConfig
from splitserve.chunkcache.store import ChunkStore
from splitserve.chunkcache.tiers import LocalTier
from splitserve.chunkcache.variants import VariantMeta
from splitserve.client import Client
from splitserve.engine import Engine, EngineConfig, SamplingParams
from tests.fuzz.harness import KEY, assert_healthy, fuzz_settings, node
from tests.support.cluster import node_stats, wait_until

DOCUMENT, QUESTION = "The river runs north past the old mill and the bridge.", "Where does it run?"
HEADER = struct.Struct("<4sHHIBBHIHH16s8sQ")  # format.py's header


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(num_blocks=64))


@dataclass(repr=False)
class Stored:
    cache: ChunkCache
    tier: RedisTier
    meta: VariantMeta
    kv: ChunkKV
    prompt: list[int]
    spans: list[tuple[int, int]]
    client: redis.Redis

    def kv_key(self) -> str:
        return f"{self.tier.base}:{self.meta.chunk}:kv:{self.meta.variant_id}"

    def put_back(self) -> None:
        self.cache.store.put(self.meta, self.kv)

    def miss_or_exact(self) -> bool:
        """True on a miss; else the placed KV must be the stored one, bit for bit."""
        plan = self.cache.plan(self.prompt, self.spans)
        if plan.misses:
            return True
        (placed,) = plan.placed
        if plan.loading is not None:  # read layer by layer: a bad payload shows after the last layer
            try:
                layers = [placed.layer(i) for i in range(self.kv.k.shape[0])]
                plan.loading.wait()
            except CorruptValue:
                return True  # deleted; the blend would have returned None (a miss)
            k, v = torch.stack([kv[0] for kv in layers]), torch.stack([kv[1] for kv in layers])
        else:
            k, v = placed.kv.k, placed.kv.v
        assert torch.equal(k, self.kv.k) and torch.equal(v, self.kv.v)
        assert torch.equal(placed.kv.positions, self.kv.positions)
        return False


@pytest.fixture
def chunk(engine, tiny_model, redis_url) -> Stored:
    """A chunk cache whose only tier is Redis, one document's chunk stored in it, and its prompt."""
    cfg = engine.model_config
    tier = RedisTier(redis_url, model_fingerprint(tiny_model), "float32",
                     layout=(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim))
    config = ChunkCacheConfig(BlendConfig((1,), (1.0,)), planning="ratio")
    cache = ChunkCache(engine, ChunkStore(LocalTier(0), tier), config)
    prompt, spans = document_prompt(engine.tokenizer, [DOCUMENT], QUESTION)
    start, n = spans[0]
    meta, kv = cache.compute_alone(engine, prompt[start:start + n])
    stored = Stored(cache, tier, meta, kv, prompt, spans, redis.Redis.from_url(redis_url))
    stored.put_back()
    return stored


def _reshaped(kv: ChunkKV, dim: int, size: int) -> ChunkKV:
    """The same kind of value with one dimension (0 layers, 1 tokens, 2 heads, 3 head dim) of another size."""
    shape = list(kv.k.shape)
    shape[dim] = size
    positions = torch.arange(shape[1]) if kv.positions is not None else None
    return ChunkKV(torch.randn(shape), torch.randn(shape), positions)


def _header_with(blob: bytes, **fields) -> bytes:
    names = ("magic", "version", "flags", "header_len", "dtype", "reserved", "num_layers", "num_tokens",
             "num_kv_heads", "head_dim", "fingerprint", "checksum", "payload_len")
    values = dict(zip(names, HEADER.unpack_from(blob))) | fields
    return HEADER.pack(*values.values()) + blob[HEADER_BYTES:]


@st.composite
def corrupted(draw, blob: bytes, kv: ChunkKV, fingerprint: bytes) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["truncated", "random", "magic", "flip", "fingerprint", "shape", "dtype", "huge",
                                 "version"]))
    return kind, draw(_corruption(kind, blob, kv, fingerprint))


@st.composite
def _corruption(draw, kind: str, blob: bytes, kv: ChunkKV, fingerprint: bytes) -> bytes:
    if kind == "truncated":
        return blob[:draw(st.integers(0, len(blob) - 1))]
    if kind == "random":
        return draw(st.binary(max_size=2 * HEADER_BYTES))
    if kind == "magic":
        return draw(st.binary(min_size=4, max_size=4).filter(lambda m: m != b"SSKV")) + blob[4:]
    if kind == "flip":
        i = draw(st.integers(0, len(blob) - 1))
        return blob[:i] + bytes([blob[i] ^ draw(st.integers(1, 255))]) + blob[i + 1:]
    if kind == "fingerprint":
        return encode(kv, draw(st.binary(min_size=16, max_size=16).filter(lambda f: f != fingerprint)))
    if kind == "shape":  # a well-formed value (checksum and all) of another shape
        dim = draw(st.integers(0, 3))
        size = draw(st.integers(1, 40).filter(lambda s: s != kv.k.shape[dim]))
        return encode(_reshaped(kv, dim, size), fingerprint)
    if kind == "dtype":
        dtype = draw(st.sampled_from([torch.float16, torch.bfloat16]))
        return encode(ChunkKV(kv.k.to(dtype), kv.v.to(dtype), kv.positions), fingerprint)
    if kind == "version":
        return _header_with(blob, version=draw(st.integers(0, 65535).filter(lambda v: v != 1)))
    big = {"num_tokens": 2**32 - 1, "num_kv_heads": 65535, "head_dim": 65535, "num_layers": 65535,
           "payload_len": 2**64 - 1, "header_len": 2**32 - 1}
    return _header_with(blob, **dict(draw(st.lists(st.sampled_from(sorted(big.items())), min_size=1, unique=True))))


def test_a_clean_value_is_a_hit(chunk):
    assert not chunk.miss_or_exact()


@fuzz_settings(max_examples=60)
@given(data=st.data())
def test_malformed_values_are_misses_and_deleted(chunk, data):
    key = chunk.kv_key()
    kind, blob = data.draw(corrupted(chunk.client.get(key), chunk.kv, chunk.tier.fingerprint))
    chunk.client.set(key, blob)
    corrupt = chunk.tier.num_corrupt
    missed = chunk.miss_or_exact()
    assert missed or kind == "flip"  # a flipped bit the reader ignores (a reserved one) may still be exact
    if chunk.tier.num_corrupt > corrupt:
        assert chunk.client.get(key) is None and chunk.tier.metas([chunk.meta.chunk]) == {}
    chunk.put_back()  # clean again for the next example


numbers = st.one_of(st.integers(-3, 3), st.sampled_from([2**70, -(2**70)]), st.floats(), st.text(max_size=2), st.none())
HOSTILE_FIELDS = {"v": numbers, "chunk": numbers, "prefix_hash": numbers, "start": numbers, "num_tokens": numbers,
                  "num_bytes": numbers, "intra": numbers, "token_inter": st.lists(numbers, max_size=3) | numbers,
                  "prefix": st.lists(st.tuples(st.text(max_size=2), numbers, numbers), min_size=1, max_size=2)}


def _with_prefix(body: dict) -> bytes:
    """prefix: [(key, length, inter), ...] -> the three lists of the stored JSON."""
    if "prefix" in body:
        body["prefix_keys"], body["prefix_lengths"], body["inter"] = zip(*body.pop("prefix"))
    return json.dumps(body).encode()


@fuzz_settings(max_examples=50)
@given(data=st.data())
def test_malformed_metadata_is_a_miss(chunk, data):
    """The stored metadata with one or two fields hostile, or bytes that are not metadata."""
    body = json.loads(chunk.meta.to_json())
    for key in data.draw(st.lists(st.sampled_from(sorted(HOSTILE_FIELDS)), min_size=1, max_size=2, unique=True)):
        body[key] = data.draw(HOSTILE_FIELDS[key])
    raw = data.draw(st.one_of(st.just(_with_prefix(body)), st.binary(max_size=60), st.just(b"[" * 100_000)))
    chunk.client.hset(f"{chunk.tier.base}:{chunk.meta.chunk}:m", chunk.meta.variant_id, raw)
    chunk.miss_or_exact()  # a miss, or (a harmless field changed) the stored KV exactly
    chunk.put_back()


EDGE_METADATA = [  # field combinations too specific for random search (the first broke planning)
    {"num_tokens": 0, "token_inter": [], "prefix": [("k", 4, 0.5)]},  # division by zero in Cache-Craft
    {"prefix": [("k", -4, 0.5)]}, {"start": -7}, {"start": 1e400}, {"num_bytes": -1},
    {"intra": float("nan"), "prefix": [("k", 4, float("inf"))]}, {"token_inter": [0.1] * 3},
]


@pytest.mark.parametrize("fields", EDGE_METADATA, ids=lambda f: ",".join(f))
def test_metadata_edge_cases_never_break_planning(chunk, fields):
    body = json.loads(chunk.meta.to_json()) | fields
    chunk.client.hset(f"{chunk.tier.base}:{chunk.meta.chunk}:m", chunk.meta.variant_id, _with_prefix(body))
    chunk.miss_or_exact()



def _cluster_chunk_stats(cluster) -> tuple[int, int]:
    """(Redis hits, corrupt values) summed over the nodes with a chunk cache."""
    stats = [node_stats(node(cluster, role).address).chunk_cache for role in ("prefill", "mixed")]
    return sum(s.redis_hits for s in stats), sum(s.corrupt_values for s in stats)


@pytest.mark.slow
def test_corrupted_chunk_values_cost_a_node_only_a_recompute(cluster, fuzz_redis_url, tiny_model):
    if fuzz_redis_url is None:
        pytest.skip("redis-server is not installed")
    docs = [DOCUMENT, "Bees make honey from the nectar of summer flowers."]
    ids, spans = Frontend.from_model_dir(tiny_model).prompt_and_chunks(prompt=QUESTION, documents=docs)
    expected = Engine(tiny_model, EngineConfig(num_blocks=64)).generate(
        [ids], SamplingParams(max_tokens=6, ignore_eos=True))[0].token_ids
    store = redis.Redis.from_url(fuzz_redis_url)
    kv_keys = lambda i: store.keys(f"ss:cc:v1:*:{content_hash(ids[spans[i][0]:sum(spans[i])])}:kv:*")

    def complete() -> list[int]:
        with Client(cluster.url, api_key=KEY, timeout_s=60) as client:
            return client.complete(prompt=QUESTION, documents=docs, max_tokens=6, ignore_eos=True).token_ids

    assert complete() == expected  # every chunk missed: the plain path; the chunks are stored afterwards
    # each as computed in the prompt, and the second also after the head alone
    assert wait_until(lambda: [len(kv_keys(i)) for i in range(len(docs))] == [1, 2], 30)
    hits, corrupt = _cluster_chunk_stats(cluster)
    assert complete() == expected  # read back from Redis (recompute ratio 1.0: exactly the plain output)
    assert _cluster_chunk_stats(cluster)[0] > hits
    for key in kv_keys(0):
        store.set(key, store.get(key)[:-7])  # truncated
    for key in kv_keys(1):
        value = bytearray(store.get(key))
        value[len(value) // 2] ^= 0x40  # one flipped bit in the payload
        store.set(key, bytes(value))
    assert complete() == expected
    assert _cluster_chunk_stats(cluster)[1] >= corrupt + 2
    assert_healthy(cluster)
