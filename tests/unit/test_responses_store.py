"""The Responses API's stores of responses: in memory (bounded by count and by bytes, least recently used
dropped first) and in a real redis-server (JSON that must read back as a stored response, a TTL, a clear
error when Redis is gone); and a response's output as the chat turn a continuation sees."""

import asyncio

import pytest

from router.front.responses_format import answer_messages
from router.front.responses_store import REDIS_PREFIX, RedisResponseStore, ResponseStore, StoredResponse
from router.redis_client import StoreUnavailable


def entry(rid: str, text: str = "hi", conversation: list | None = None) -> StoredResponse:
    return StoredResponse({"id": rid, "output": [{"type": "message", "content": [{"type": "output_text",
                                                                                  "text": text}]}]},
                          conversation or [], [{"type": "message", "id": "msg_1", "role": "user"}])


def run(coroutine):
    return asyncio.run(coroutine)


def test_least_recently_used_goes_first_when_full():
    store = ResponseStore(max_entries=2)

    async def scenario():
        await store.put(entry("a"))
        await store.put(entry("b"))
        assert await store.get("a") is not None  # a is now the most recently used
        await store.put(entry("c"))
        return [await store.get(k) is not None for k in "abc"]
    assert run(scenario()) == [True, False, True] and len(store) == 2


def test_bytes_bound_and_deletes_keep_the_count_right():
    store = ResponseStore(max_bytes=900)

    async def scenario():
        for i in range(5):
            await store.put(entry(str(i), "x" * 60, [{"role": "user", "content": "y" * 20}]))
        assert 0 < store.num_bytes <= 900 and await store.get("4") and await store.get("0") is None
        await store.put(entry("huge", "x" * 2000))  # larger than the whole store: not kept, nothing dropped for it
        assert await store.get("huge") is None and await store.get("4")
        assert await store.delete("4") and not await store.delete("4")
        await store.put(entry("3", "again"))  # a replaced entry's bytes leave with it
        assert (await store.get("3")).response == entry("3", "again").response
    run(scenario())
    assert store.num_bytes == sum(size for _, size in store._entries.values())


def test_redis_store_round_trip_ttl_and_what_does_not_read_back(redis_url):
    import redis

    raw = redis.Redis.from_url(redis_url)
    store = RedisResponseStore(redis_url, ttl_s=60)

    async def scenario():
        await store.put(entry("r1", "Paris.", [{"role": "user", "content": "q"}]))
        got = await store.get("r1")
        assert got == entry("r1", "Paris.", [{"role": "user", "content": "q"}])
        assert 0 < raw.ttl(REDIS_PREFIX + "r1") <= 60
        for bad in (b"\x80\x04not json", b'{"response": 1}', b'{"response": {}, "conversation": [1], "input_items": []}'):
            raw.set(REDIS_PREFIX + "bad", bad)
            assert await store.get("bad") is None
        assert await store.delete("r1") and await store.get("r1") is None and not await store.delete("r1")
    run(scenario())


def test_redis_store_that_cannot_be_reached_says_so():
    store = RedisResponseStore("redis://127.0.0.1:1", timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="did not answer"):
        run(store.get("r1"))


def test_answer_messages_are_the_text_or_the_calls():
    assert answer_messages(entry("r", "Paris.").response["output"]) == [{"role": "assistant", "content": "Paris."}]
    calls = [{"type": "function_call", "call_id": f"call_{i}", "name": "f", "arguments": "{}"} for i in range(2)]
    assert answer_messages(calls) == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in range(2)]}]
