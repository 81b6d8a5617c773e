"""The served model's tokenizer over HTTP, as vLLM serves it: POST /tokenize, POST /detokenize and
GET /tokenizer_info (behind the API key, like /v1).

A client counts a prompt's tokens before sending it, or tokenizes with the server's own tokenizer
when it has none (lm-evaluation-harness's `tokenizer_backend=remote` reads all three; a GGUF
model has no tokenizer folder to hand it). /tokenize takes `prompt` (text; `add_special_tokens`,
default true, adds what a completions prompt gets) or `messages` (the chat template, as a chat
request is tokenized, with the same `add_generation_prompt`, `continue_final_message` and
`chat_template_kwargs`); it answers `count`, `max_model_len`, `tokens` and, with
`return_token_strs`, each token's text.
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict

from router.front.openai_models import ChatMessage, ChatTemplateOptions, InvalidRequest, parse_body
from splitserve.engine.sampling import check_token_ids


class TokenizeRequest(ChatTemplateOptions):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


class TokenizerEndpoints:
    def __init__(self, endpoints):
        """`endpoints`: http_api.Endpoints (its context, body reading and model check)."""
        self.endpoints = endpoints
        self.tokenizer = endpoints.ctx.frontend.tokenizer

    async def tokenize(self, request: Request) -> dict:
        body = parse_body(TokenizeRequest, await self.endpoints.body(request))
        self.endpoints.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise InvalidRequest("send one of prompt or messages", "prompt")
        if body.messages is not None:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            tokens = self.tokenizer.encode_chat(messages, chat_format=body.chat_format())
        else:
            tokens = self.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        reply = {"count": len(tokens), "max_model_len": self.endpoints.ctx.frontend.limits.max_model_len,
                 "tokens": tokens}
        if body.return_token_strs:
            reply["token_strs"] = [self.endpoints.ctx.texts(t) for t in tokens]
        return reply

    async def detokenize(self, request: Request) -> dict:
        body = parse_body(DetokenizeRequest, await self.endpoints.body(request))
        self.endpoints.check_model(body.model)
        try:
            check_token_ids("token ids", body.tokens, self.endpoints.ctx.frontend.limits.vocab_size)
        except ValueError as exc:
            raise InvalidRequest(str(exc), "tokens") from None
        return {"prompt": self.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    async def tokenizer_info(self) -> dict:
        tok = self.tokenizer
        return {"tokenizer_class": "splitserve", "model": self.endpoints.ctx.model_name,
                "vocab_size": self.endpoints.ctx.frontend.limits.vocab_size,
                "model_max_length": self.endpoints.ctx.frontend.limits.max_model_len,
                "bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": None,
                "chat_template": tok.chat_template}


def add_tokenizer_routes(app: FastAPI, endpoints, check_key: Callable) -> None:
    routes = TokenizerEndpoints(endpoints)
    api = APIRouter(dependencies=[Depends(check_key)])
    api.add_api_route("/tokenize", routes.tokenize, methods=["POST"])
    api.add_api_route("/detokenize", routes.detokenize, methods=["POST"])
    api.add_api_route("/tokenizer_info", routes.tokenizer_info, methods=["GET"])
    app.include_router(api)
