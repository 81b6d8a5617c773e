"""One HTTP request to an ASGI app inside this process, as if it came over the network.

The Batch API runs each line of a batch through the router's own HTTP app this way, so a line
meets exactly what a client's request meets (the body limit, validation, admission, the metrics,
the error shapes) without a socket. It carries no API key: the scope names the `caller` (the key
digest that owns the batch) under CALLER, which no request from the network can set, and the key
check lets such a request through (the batch was created with a valid key). After the body the app's `receive()` waits until
`gone` is set, then says the client disconnected: how a cancelled batch stops its lines in
flight (the app then cancels them on the nodes, as for a client that hangs up).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


CALLER = "splitserve.internal_caller"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def post(app, path: str, body: bytes, headers: dict[str, str], caller: str,
               gone: asyncio.Event | None = None) -> Answer:
    """POST `body` to `path` on behalf of `caller`; the whole answer (a streamed one is collected)."""
    gone = gone or asyncio.Event()
    sent = False
    status, answer_headers, chunks = 500, {}, []

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status, answer_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(_scope(path, body, headers) | {CALLER: caller}, receive, send)
    return Answer(status, answer_headers, b"".join(chunks))


def _scope(path: str, body: bytes, headers: dict[str, str]) -> dict:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": raw, "client": ("batch", 0), "server": ("router", 0)}
