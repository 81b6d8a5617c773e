"""Amazon SageMaker's inference contract, as vLLM serves it: `POST /invocations` takes the body of any of the
generation and pooling APIs and answers exactly as that API does (streaming included), chosen by the body's
fields: `messages` chat completions, `prompt` completions, `input` embeddings, `query` rerank, `text_1` score.
`GET /ping` (http_api.py) is the contract's health probe. Behind the API key like /v1.
"""

from __future__ import annotations

import json

from fastapi import Depends, FastAPI, Request

from router.front.openai_models import InvalidRequest

# (a field only that API's body has, the Endpoints method that serves it), in the order they are tried
TARGETS = (("messages", "chat"), ("prompt", "completions"), ("input", "embeddings"), ("query", "rerank"),
           ("text_1", "score"))


def add_invocations_route(app: FastAPI, endpoints, check_key) -> None:
    """`endpoints`: http_api.Endpoints (its body reading and the APIs' handlers)."""

    async def invocations(request: Request):
        body = await endpoints.body(request)
        return await getattr(endpoints, target_of(body))(replayed(request, body))

    app.add_api_route("/invocations", invocations, methods=["POST"], dependencies=[Depends(check_key)])


def target_of(body: bytes) -> str:
    """The Endpoints method a body is for; InvalidRequest (400) when its fields name none."""
    try:
        fields = json.loads(body)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise InvalidRequest("the body must be a JSON object")
    target = next((method for field, method in TARGETS if field in fields), None)
    if target is None:
        raise InvalidRequest("an invocation carries messages (chat), prompt (completions), input (embeddings), "
                             "query (rerank) or text_1 (score)")
    return target


def replayed(request: Request, body: bytes) -> Request:
    """The request again, its body (already read) to be read once more; then the client's own messages (a
    disconnect still cancels the work)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, receive)
