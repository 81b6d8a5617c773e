"""The prefix store (splitserve/prefixstore) between two engines that share a real redis-server: a prompt computed
on one is read, not computed, on the other, with the same tokens and logprobs as computing it; a corrupt value or a
Redis that does not answer costs nothing but the reuse; requests that may not share (another cache salt, a LoRA
adapter, prompt logprobs) share nothing. tests/integration/test_prefix_store_cluster.py runs it in real nodes."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis
import torch

from splitserve.chunkcache.keys import model_fingerprint
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.prefixstore.engine_blocks import shareable_blocks
from splitserve.prefixstore.node_path import PrefixStore, build_prefix_store, shared_admission, storing_outputs
from splitserve.prefixstore.redis_blocks import RedisBlocks
from splitserve.runtime.engine_loop import EngineLoop
from splitserve.runtime.output_stream import run_streaming

BLOCK = 16
PROMPT = random.Random(7).choices(range(3, 1000), k=100)  # 99 tokens before the last: 6 full blocks
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=3)


class Node:
    """An engine, its loop and a prefix store on `url`, as a prefill or mixed node has them."""

    def __init__(self, model, url: str, **engine_kw):
        self.loop = EngineLoop(Engine(model, EngineConfig(block_size=BLOCK, num_blocks=64, **engine_kw)))
        self.loop.start()
        self.store: PrefixStore = build_prefix_store(url, 60, str(model), self.loop)

    def generate(self, prompt: list[int], params: SamplingParams = GREEDY, rid: str = "r"):
        async def run():
            admit = lambda engine: engine.add_request(prompt, params, rid)
            admission = await shared_admission(self.store, prompt, params, admit)
            outs = []
            async for out in storing_outputs(self.store, prompt, params,
                                             run_streaming(self.loop, rid, admission.admit)):
                admission.prefilled()
                outs.append(out)
            return outs
        outs = asyncio.run(run())
        assert self.store.wait_stored()
        return ([t for o in outs for t in o.new_token_ids], [lp for o in outs for lp in o.new_logprobs],
                outs[-1].num_cached_tokens)

    def close(self) -> None:
        self.store.close()
        self.loop.stop()


@pytest.fixture
def nodes(tiny_model, redis_url):
    made = []

    def make(url: str = redis_url, **engine_kw) -> Node:
        made.append(Node(tiny_model, url, **engine_kw))
        return made[-1]
    yield make
    for node in made:
        node.close()


def same_answers(a, b) -> None:
    assert a[0] == b[0]
    for (x, top_x), (y, top_y) in zip(a[1], b[1], strict=True):  # (its logprob, [(token, logprob)] of the top)
        assert x == pytest.approx(y, abs=1e-5) and [t for t, _ in top_x] == [t for t, _ in top_y]


def block_keys(url: str) -> list[bytes]:
    return sorted(redis.Redis.from_url(url).scan_iter("ss:pb:v1:*"))


def test_a_prompt_computed_on_one_node_is_read_on_another_with_the_same_answer(nodes, redis_url):
    first, second = nodes(), nodes()
    computed = first.generate(PROMPT)
    assert computed[2] == 0 and first.store.stats()["stored_tokens"] == 96
    assert len(block_keys(redis_url)) == 6
    read = second.generate(PROMPT)
    same_answers(read, computed)
    assert read[2] == 96  # six blocks read, not computed
    s = second.store.stats()
    assert (s["requested_tokens"], s["hit_tokens"], s["stored_tokens"], s["corrupt_values"]) == (96, 96, 0, 0)
    assert s["bytes_read"] > 0
    again = second.generate(PROMPT, rid="again")  # now in its own prefix cache: Redis is not asked
    same_answers(again, computed)
    assert second.store.stats()["requested_tokens"] == 96
    for node in (first, second):  # every block reference taken for an import or export is given back
        node.loop.call(lambda engine: engine.check_integrity()).result()
        assert node.loop.call(lambda engine: engine.pool.num_used).result() == 0


def test_a_longer_prompt_reads_the_shared_prefix_and_stores_its_own_blocks(nodes, redis_url):
    first, second = nodes(), nodes()
    first.generate(PROMPT)
    longer = PROMPT + random.Random(8).choices(range(3, 1000), k=40)  # the next turn of a conversation
    reference = nodes(url="redis://127.0.0.1:1").generate(longer)  # computed in full (no Redis there)
    read = second.generate(longer)
    same_answers(read, reference)
    assert read[2] == 96 and second.store.stats()["stored_tokens"] == 128 - 96 + 16  # + the block its answer filled
    assert len(block_keys(redis_url)) == 9


def test_an_answer_stored_where_it_was_generated_is_read_by_the_next_turn_elsewhere(nodes, redis_url):
    first, second = nodes(), nodes()
    answer = first.generate(PROMPT, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0]
    assert first.store.stats()["stored_tokens"] == 96 + 32  # 139 tokens computed: the answer filled blocks 6 and 7
    assert len(block_keys(redis_url)) == 8
    next_turn = PROMPT + answer + random.Random(9).choices(range(3, 1000), k=20)
    reference = nodes(url="redis://127.0.0.1:1").generate(next_turn)
    read = second.generate(next_turn)
    same_answers(read, reference)
    assert read[2] == 128 and second.store.stats()["hit_tokens"] == 128


def test_the_block_holding_a_prompts_last_token_is_stored_with_the_answer(nodes, redis_url):
    node = nodes()
    node.generate(PROMPT[:96], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    assert node.store.stats()["stored_tokens"] == 80 + 48  # the prompt's blocks 0-4, then 5 (its last token) to 7
    assert len(block_keys(redis_url)) == 8


def test_without_answers_only_the_prompt_is_stored(nodes, redis_url):
    node = nodes()
    node.store.store_answers = False  # --no-prefix-store-answers
    node.generate(PROMPT, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    assert node.store.stats()["stored_tokens"] == 96 and len(block_keys(redis_url)) == 6


def test_the_export_buffer_is_reused(nodes):
    node = nodes()
    node.generate(PROMPT)
    [buffer] = node.store._spare_buffers
    node.generate(list(reversed(PROMPT)), rid="other")  # other blocks: exported into the same buffer
    assert len(node.store._spare_buffers) == 1 and node.store._spare_buffers[0] is buffer
    assert node.store.stats()["stored_tokens"] == 2 * 96


def test_a_corrupt_value_is_dropped_and_the_rest_of_the_prompt_computed(nodes, redis_url):
    first, second = nodes(), nodes()
    computed = first.generate(PROMPT)
    blocks = shareable_blocks(first.loop.engine, PROMPT, GREEDY)
    key = second.store.redis.key(blocks.hashes[3])
    client = redis.Redis.from_url(redis_url)
    client.setrange(key, client.strlen(key) - 4, b"\x00\x01\x02\x03")
    read = second.generate(PROMPT)
    same_answers(read, computed)
    assert read[2] == 48 and second.store.stats()["corrupt_values"] == 1  # blocks 0-2 read, 3 on computed
    assert client.get(key) is not None  # stored again, computed this time
    assert second.store.stats()["stored_tokens"] == 16  # block 3: Redis still holds 4 and 5


def test_a_value_from_other_positions_or_another_shape_is_not_trusted(nodes, redis_url, tiny_model):
    first = nodes()
    first.generate(PROMPT)
    hashes = shareable_blocks(first.loop.engine, PROMPT, GREEDY).hashes
    client = redis.Redis.from_url(redis_url)
    store = first.store.redis
    client.set(store.key(hashes[1]), client.get(store.key(hashes[0])))  # block 0's KV under block 1's name
    assert len(store.get(list(hashes[:3]), 0)) == 1 and store.counts["corrupt_values"] == 1
    other = RedisBlocks(redis_url, model_fingerprint(tiny_model), torch.float32, BLOCK, (3, 2, 16))
    other.base = store.base  # a node of another layout reading these keys
    assert other.get([hashes[0]], 0) == [] and other.counts["corrupt_values"] == 1


def test_a_redis_that_does_not_answer_costs_nothing_but_the_reuse(nodes, caplog):
    node = nodes(url="redis://127.0.0.1:1")
    plain = node.generate(PROMPT)
    assert plain[2] == 0 and node.store.stats()["redis_errors"] == 1  # the read; no store tried while marked down
    assert sum("prefix store: a Redis read failed" in r.getMessage() for r in caplog.records) == 1
    same_answers(node.generate(PROMPT, rid="again"), plain)  # its own prefix cache still works


def test_requests_that_may_not_share_share_nothing(nodes, redis_url):
    first, second = nodes(), nodes()
    salted = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, cache_salt="tenant-a")
    first.generate(PROMPT, salted)
    assert second.generate(PROMPT)[2] == 0  # another salt: other keys
    assert second.generate(PROMPT, salted, rid="salted")[2] == 96
    engine = first.loop.engine
    assert shareable_blocks(engine, PROMPT, SamplingParams(lora="an-adapter")) is None
    assert shareable_blocks(engine, PROMPT, SamplingParams(prompt_logprobs=1)) is None


def test_nodes_with_another_kv_dtype_use_other_keys(nodes, redis_url):
    nodes().generate(PROMPT)
    half = nodes(kv_cache_dtype="float16")
    assert half.generate(PROMPT)[2] == 0 and half.store.stats()["stored_tokens"] == 96
    assert half.generate(PROMPT, rid="again")[2] == 96  # its own prefix cache
    assert len(block_keys(redis_url)) == 12
