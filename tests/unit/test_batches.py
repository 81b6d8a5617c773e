"""The Batch API's logic alone: parsing batch files, the file stores' pages, owners and bound (in memory and
in a real redis-server), the batch store in Redis (what reads back, a cancel left for the runner, a batch
whose runner stopped writing it), and the in-process ASGI call (its answer, and the disconnect it reports
once told to). The whole API runs against a real cluster with the openai client in
tests/integration/test_openai_batches.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi import FastAPI, Request

from router.front import asgi_call
from router.front.batch_files import FileStore, RedisFileStore
from router.front.batch_lines import MAX_LINES, CreateBatch, parse_lines
from router.front.batch_store import REDIS_PREFIX, Batch, BatchStore, RedisBatchStore
from router.front.batches import Batches
from router.front.http_errors import ApiError
from router.redis_client import StoreUnavailable

URL = "/v1/embeddings"


def line(custom_id="a", **over) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": {"input": "x"}} | over)


def test_parse_lines_keeps_good_lines_in_order_and_names_bad_ones():
    lines, errors = parse_lines(f"{line('a')}\n\n{line('b', body={'input': 'x', 'priority': -1})}\n".encode(), URL)
    assert [(x.custom_id, json.loads(x.body)) for x in lines] == [("a", {"input": "x", "priority": 1}),
                                                                  ("b", {"input": "x", "priority": -1})]
    assert errors == []
    bad = "\n".join([line("a"), line("a"), line("c", method="GET"), line("d", body=[]), line("", url=URL), "[1]",
                     "{", line("e", body={"stream": True})])
    _, errors = parse_lines(bad.encode(), URL)
    assert [(e["line"], e["param"], e["code"]) for e in errors] == [
        (2, "custom_id", "invalid_request"), (3, "method", "invalid_request"), (4, "body", "invalid_request"),
        (5, "custom_id", "invalid_request"), (6, None, "invalid_request"), (7, None, "invalid_json_line"),
        (8, "body.stream", "invalid_request")]
    assert parse_lines(b"\n \n", URL)[1][0]["code"] == "empty_file"
    assert parse_lines(b"\xff\xfe", URL)[1][0]["code"] == "invalid_json_line"
    many = "\n".join(line(str(i)) for i in range(MAX_LINES + 1)).encode()
    assert parse_lines(many, URL)[1][-1]["code"] == "too_many_requests"


def test_file_store_pages_owners_and_bound():
    asyncio.run(_pages_owners_and_bound(FileStore(max_bytes=10)))


def test_redis_file_store_pages_owners_and_bound(redis_url):
    asyncio.run(_pages_owners_and_bound(RedisFileStore(redis_url, max_bytes=10)))


async def _pages_owners_and_bound(store) -> None:
    first, second = await store.add("me", "a", "batch", b"1234"), await store.add("me", "b", "batch", b"56")
    await store.add("you", "c", "batch", b"7")
    assert await store.free_bytes() == 3
    with pytest.raises(ApiError) as caught:
        await store.add("me", "d", "batch", b"1234")
    assert caught.value.status == 413 and await store.free_bytes() == 3
    await store.add("me", "out", "batch_output", b"12345", output=True)  # a batch's output is never refused
    page = await store.listed("me", "batch", limit=1, order="desc", after=None)
    assert [f["id"] for f in page["data"]] == [second.id] and page["has_more"]
    page = await store.listed("me", "batch", limit=1, order="desc", after=second.id)
    assert [f["id"] for f in page["data"]] == [first.id] and not page["has_more"]
    assert [f["bytes"] for f in (await store.listed("me", None, 100, "asc", None))["data"]] == [4, 2, 5]
    assert (await store.get("me", first.id)).data == b"1234"
    with pytest.raises(ApiError) as caught:
        await store.get("you", first.id)
    assert caught.value.status == 404
    await store.delete("me", first.id)
    with pytest.raises(ApiError):
        await store.get("me", first.id)
    assert await store.free_bytes() == 2  # 2 + 1 + 5 of 10: the output counts too


def test_asgi_post_answers_for_its_caller_and_reports_a_disconnect_once_told():
    app = FastAPI()
    seen = {}

    @app.post("/echo")
    async def echo(request: Request):
        return {"body": (await request.json()), "caller": request.scope.get(asgi_call.CALLER)}

    @app.post("/wait")
    async def wait(request: Request):
        await request.body()
        seen["message"] = await request.receive()  # blocks until the caller gives up
        return {}

    async def main():
        answer = await asgi_call.post(app, "/echo", b'{"a": 1}', {"content-type": "application/json"}, "owner-1")
        assert answer.status == 200 and json.loads(answer.body) == {"body": {"a": 1}, "caller": "owner-1"}
        gone = asyncio.Event()
        call = asyncio.create_task(asgi_call.post(app, "/wait", b"{}", {}, "owner-1", gone))
        await asyncio.sleep(0.05)
        assert not call.done()
        gone.set()
        await asyncio.wait_for(call, 5)
        assert seen["message"] == {"type": "http.disconnect"}

    asyncio.run(main())


def test_redis_batch_store_round_trip_claims_results_and_cancel_flag(redis_url):
    import redis

    async def scenario():
        store = RedisBatchStore(redis_url)
        request = CreateBatch(input_file_id="file-1", endpoint="/v1/embeddings", completion_window="24h",
                              metadata={"k": "v"})
        batch = Batch("batch_a", "me", request, 100, 200, total=3, completed=1)
        batch.enter("in_progress")
        await store.save(batch)
        assert (await store.load("batch_a")).card() == batch.card()
        assert [b.id for b in await store.owned("me")] == ["batch_a"] and await store.owned("you") == []
        assert not await store.cancel_requested("batch_a")
        await store.request_cancel("batch_a")
        assert await store.cancel_requested("batch_a")
        redis.Redis.from_url(redis_url).set(REDIS_PREFIX + "batch_b", b"\x80not json")
        assert await store.load("batch_b") is None and await store.load("batch_c") is None
        assert await store.claim("batch_a", "router-1") and not await store.claim("batch_a", "router-2")
        assert await store.renew("batch_a", "router-1") and not await store.renew("batch_a", "router-2")
        await store.release("batch_a", "router-2")  # not its claim: nothing happens
        assert not await store.claim("batch_a", "router-2")
        await store.release("batch_a", "router-1")
        assert await store.claim("batch_a", "router-2") and not await store.renew("batch_a", "router-1")
        await store.save_result("batch_a", 2, {"custom_id": "c"})
        redis.Redis.from_url(redis_url).hset(REDIS_PREFIX + "batch_a:results", "1", b"{broken")
        assert await store.results("batch_a") == {2: {"custom_id": "c"}}  # what does not read back is sent again
        await store.drop_results("batch_a")
        assert await store.results("batch_a") == {}

    asyncio.run(scenario())


def test_a_batch_whose_runner_stopped_is_resumed_by_the_next_router_that_reads_it(redis_url):
    """Router 1 answered line 0 and stopped (its claim lapsed); router 2, asked for the batch, claims it and
    sends only lines 1 and 2; the output holds all three in order."""
    async def scenario():
        files, store = RedisFileStore(redis_url), RedisBatchStore(redis_url)
        data = "\n".join(line(f"c{i}", body={"input": f"text {i}"}) for i in range(3)).encode()
        source = await files.add("me", "in.jsonl", "batch", data)
        request = CreateBatch(input_file_id=source.id, endpoint=URL, completion_window="24h")
        batch = Batch("batch_r", "me", request, int(time.time()), int(time.time()) + 3600, total=3, completed=1)
        batch.enter("in_progress")
        await store.save(batch)
        earlier = {"id": "batch_req_0", "custom_id": "c0", "error": None,
                   "response": {"status_code": 200, "request_id": "batch_req_0", "body": {"input": "from router 1"}}}
        await store.save_result("batch_r", 0, earlier)
        router2 = Batches(files, store=store)
        router2.app = app = _app_answering([])
        resumed = await _finished(router2, "batch_r")
        assert resumed.status == "completed" and (resumed.completed, resumed.failed) == (3, 0)
        output = [json.loads(x) for x in (await files.get("me", resumed.output_file_id)).data.splitlines()]
        assert [r["response"]["body"]["input"] for r in output] == ["from router 1", "text 1", "text 2"]
        assert app.state.sent == 2 and await store.results("batch_r") == {}
        assert (await store.load("batch_r")).status == "completed"

    asyncio.run(scenario())


def test_a_sweep_resumes_the_batches_no_router_runs_without_anyone_asking(redis_url):
    """The store keeps the set of unfinished batches; a sweep claims and resumes those without a live claim,
    leaves one another router holds, and the finished batch leaves the set."""
    async def scenario():
        files, store = RedisFileStore(redis_url), RedisBatchStore(redis_url)
        source = await files.add("me", "in.jsonl", "batch", line("c0", body={"input": "text 0"}).encode())
        request = CreateBatch(input_file_id=source.id, endpoint=URL, completion_window="24h")
        for batch_id in ("batch_s1", "batch_s2"):
            batch = Batch(batch_id, "me", request, int(time.time()), int(time.time()) + 3600)
            batch.enter("in_progress")
            await store.save(batch)
        assert {"batch_s1", "batch_s2"} <= set(await store.unfinished())
        assert await store.claim("batch_s2", "a-live-router")
        router2 = Batches(files, store=store)
        router2.app = _app_answering([])
        assert await router2.sweep() == 1 and await router2.sweep() == 0  # batch_s1 runs here now
        for _ in range(200):
            if (await store.load("batch_s1")).final:
                break
            await asyncio.sleep(0.02)
        assert (await store.load("batch_s1")).status == "completed"
        assert "batch_s1" not in await store.unfinished() and "batch_s2" in await store.unfinished()
        assert (await store.load("batch_s2")).status == "in_progress"
        other = await store.load("batch_s2")
        other.enter("cancelled")
        await store.save(other)
        assert "batch_s2" not in await store.unfinished()
        router2.start_sweeping()  # every half claim period: 15 s by default
        await router2.stop_sweeping()
        assert router2.store.sweep_s == 15.0 and await BatchStore().unfinished() == []

    asyncio.run(scenario())


def test_batch_stores_that_cannot_be_reached_say_so():
    async def scenario():
        for call in (lambda: RedisBatchStore("redis://127.0.0.1:1", timeout_s=0.5).load("x"),
                     lambda: RedisFileStore("redis://127.0.0.1:1", timeout_s=0.5).free_bytes()):
            with pytest.raises(StoreUnavailable, match="batch store") as caught:
                await call()
            assert caught.value.code == "batch_store_unavailable"

    asyncio.run(scenario())


def _app_answering(statuses: list[int]) -> FastAPI:
    """An app whose /v1/embeddings answers the given statuses in turn (then 200s), Retry-After 0 on a 429."""
    from fastapi.responses import JSONResponse

    app, answers = FastAPI(), iter(statuses)
    app.state.sent = 0

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        app.state.sent += 1
        status = next(answers, 200)
        return JSONResponse({"input": body["input"], "priority": body.get("priority")}, status_code=status,
                            headers={"Retry-After": "0", "X-Request-Id": request.headers["x-request-id"]})
    return app


async def _finished(batches: Batches, batch_id: str) -> Batch:
    for _ in range(200):
        batch = await batches.get("me", batch_id)
        if batch.final:
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(batch.status)


def test_a_batch_retries_refusals_for_load_and_keeps_other_answers_in_order():
    async def scenario():
        files = FileStore()
        batches = Batches(files, concurrency=1, priority=3)
        batches.app = _app_answering([429, 503, 400])
        data = "\n".join(line(f"c{i}", body={"input": f"text {i}"}) for i in range(3)).encode()
        source = await files.add("me", "in.jsonl", "batch", data)
        request = CreateBatch(input_file_id=source.id, endpoint=URL, completion_window="24h")
        batch = await _finished(batches, (await batches.create("me", request)).id)
        assert batch.status == "completed" and (batch.total, batch.completed, batch.failed) == (3, 2, 1)
        output = [json.loads(x) for x in (await files.get("me", batch.output_file_id)).data.splitlines()]
        errors = [json.loads(x) for x in (await files.get("me", batch.error_file_id)).data.splitlines()]
        assert [r["custom_id"] for r in output] == ["c1", "c2"] and [r["custom_id"] for r in errors] == ["c0"]
        assert errors[0]["response"]["status_code"] == 400  # the 429 and 503 before it were sent again
        assert output[0]["response"]["body"] == {"input": "text 1", "priority": 3}
        assert output[0]["response"]["request_id"] == output[0]["id"]

    asyncio.run(scenario())


def test_lines_not_sent_in_time_end_as_expired():
    async def scenario():
        files = FileStore()
        batches = Batches(files)
        batches.app = _app_answering([])
        source = await files.add("me", "in.jsonl", "batch", (line("a") + "\n" + line("b")).encode())
        request = CreateBatch(input_file_id=source.id, endpoint=URL, completion_window="24h")
        created = await batches.create("me", request)
        created.expires_at = 0  # the window has passed before any line goes out
        batch = await _finished(batches, created.id)
        assert batch.status == "expired" and batch.output_file_id is None and batch.failed == 2
        errors = [json.loads(x) for x in (await files.get("me", batch.error_file_id)).data.splitlines()]
        assert [(r["error"]["code"], r["response"]) for r in errors] == [("batch_expired", None)] * 2
        with pytest.raises(ApiError) as caught:
            await batches.cancel("me", batch.id)
        assert caught.value.status == 409

    asyncio.run(scenario())
