"""The Batch API's logic alone: parsing batch files, the file store's pages, owners and bound, and the
in-process ASGI call (its answer, and the disconnect it reports once told to). The whole API runs against a
real cluster with the openai client in tests/integration/test_openai_batches.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI, Request

from router.front import asgi_call
from router.front.batch_files import FileStore
from router.front.batches import MAX_LINES, parse_lines
from router.front.http_errors import ApiError

URL = "/v1/embeddings"


def line(custom_id="a", **over) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": {"input": "x"}} | over)


def test_parse_lines_keeps_good_lines_in_order_and_names_bad_ones():
    lines, errors = parse_lines(f"{line('a')}\n\n{line('b')}\n".encode(), URL)
    assert [(x.custom_id, json.loads(x.body)) for x in lines] == [("a", {"input": "x"}), ("b", {"input": "x"})]
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
    store = FileStore(max_bytes=10)
    first, second = store.add("me", "a", "batch", b"1234"), store.add("me", "b", "batch", b"56")
    store.add("you", "c", "batch", b"7")
    assert store.free_bytes == 3
    with pytest.raises(ApiError) as caught:
        store.add("me", "d", "batch", b"1234")
    assert caught.value.status == 413 and store.used_bytes == 7
    store.add("me", "out", "batch_output", b"12345", output=True)  # a batch's output is never refused
    page = store.listed("me", "batch", limit=1, order="desc", after=None)
    assert [f["id"] for f in page["data"]] == [second.id] and page["has_more"]
    page = store.listed("me", "batch", limit=1, order="desc", after=second.id)
    assert [f["id"] for f in page["data"]] == [first.id] and not page["has_more"]
    assert len(store.listed("me", None, 100, "asc", None)["data"]) == 3
    with pytest.raises(ApiError) as caught:
        store.get("you", first.id)
    assert caught.value.status == 404
    store.delete("me", first.id)
    with pytest.raises(ApiError):
        store.get("me", first.id)


def test_asgi_post_answers_and_reports_a_disconnect_once_told():
    app = FastAPI()
    seen = {}

    @app.post("/echo")
    async def echo(request: Request):
        return {"body": (await request.json()), "key": request.headers.get("authorization")}

    @app.post("/wait")
    async def wait(request: Request):
        await request.body()
        seen["message"] = await request.receive()  # blocks until the caller gives up
        return {}

    async def main():
        answer = await asgi_call.post(app, "/echo", b'{"a": 1}', {"Authorization": "Bearer k",
                                                                  "content-type": "application/json"})
        assert answer.status == 200 and json.loads(answer.body) == {"body": {"a": 1}, "key": "Bearer k"}
        gone = asyncio.Event()
        call = asyncio.create_task(asgi_call.post(app, "/wait", b"{}", {}, gone))
        await asyncio.sleep(0.05)
        assert not call.done()
        gone.set()
        await asyncio.wait_for(call, 5)
        assert seen["message"] == {"type": "http.disconnect"}

    asyncio.run(main())
