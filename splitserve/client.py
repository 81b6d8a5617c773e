"""A small client for the router's gRPC `Generate` stream and `Embed`, sync and async.

    from splitserve.client import Client
    with Client("grpc://127.0.0.1:50050") as client:
        for event in client.generate(prompt="Hello", max_tokens=16):
            print(event.text, end="")
        vectors = client.embed(["Hello", "Bonjour"])

With API keys and TLS: `Client("grpcs://HOST:PORT", api_key="KEY", ca_file="certs/ca.pem")`.
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field

import grpc

from splitserve.api.v1 import common_pb2, router_pb2, router_pb2_grpc
from splitserve.grpc_util import CHANNEL_OPTIONS, parse_url
from splitserve.rpc.logprobs import logprob_from_proto, prompt_logprobs_from_proto
from splitserve.tls import channel_credentials


@dataclass
class Chunk:
    token_ids: list[int]
    text: str
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list | None = None  # asked for (prompt_logprobs=K): on the first chunk, entry 0 None


@dataclass
class Final:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float
    e2e_s: float
    request_id: str
    prefill_node: str
    decode_node: str


@dataclass
class Result:
    token_ids: list[int]
    text: str
    final: Final
    prompt_logprobs: list | None = None


def build_request(prompt: str | None = None, prompt_token_ids: list[int] | None = None,
                  messages: list[dict] | None = None, documents: list[str] = (), max_tokens: int = 16,
                  temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                  stop: list[str] = (), ignore_eos: bool = False, logprobs: int | None = None,
                  request_id: str = "", presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                  repetition_penalty: float | None = None,
                  logit_bias: dict[int, float] | None = None,
                  prompt_logprobs: int | None = None, grammar: str | None = None,
                  min_p: float = 0.0, include_stop_str_in_output: bool = False,
                  skip_special_tokens: bool = True, continue_final_message: bool = False,
                  chat_template_kwargs: dict | None = None, priority: int = 0, bad_words: list[str] = (),
                  allowed_token_ids: list[int] = (),
                  truncate_prompt_tokens: int | None = None,
                  cache_salt: str | None = None, lora: str | None = None,
                  add_special_tokens: bool | None = None) -> router_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                         min_p=min_p, include_stop_str_in_output=include_stop_str_in_output,
                                         keep_special_tokens=not skip_special_tokens,
                                         stop=list(stop), ignore_eos=ignore_eos, presence_penalty=presence_penalty,
                                         frequency_penalty=frequency_penalty, logit_bias=logit_bias or {},
                                         priority=priority, bad_words=list(bad_words),
                                         allowed_token_ids=list(allowed_token_ids))
    if repetition_penalty is not None:
        sampling.repetition_penalty = repetition_penalty
    if seed is not None:
        sampling.seed = seed
    if logprobs is not None:
        sampling.logprobs = logprobs
    if prompt_logprobs is not None:
        sampling.prompt_logprobs = prompt_logprobs
    if grammar is not None:
        sampling.grammar = grammar
    if cache_salt is not None:
        sampling.cache_salt = cache_salt
    if lora is not None:
        sampling.lora = lora
    request = router_pb2.GenerateRequest(request_id=request_id, sampling=sampling, documents=list(documents))
    if truncate_prompt_tokens is not None:
        request.truncate_prompt_tokens = truncate_prompt_tokens
    if add_special_tokens is not None:
        request.add_special_tokens = add_special_tokens
    if messages is not None:
        request.chat.messages.extend(router_pb2.ChatMessage(**m) for m in messages)
        request.chat.continue_final_message = continue_final_message
        request.chat.template_kwargs_json = json.dumps(chat_template_kwargs) if chat_template_kwargs else ""
    elif prompt_token_ids is not None:
        request.prompt_token_ids.ids.extend(prompt_token_ids)
    else:
        request.prompt = prompt or ""
    return request


def _event(response: router_pb2.GenerateResponse) -> Chunk | Final:
    if response.HasField("chunk"):
        c = response.chunk
        return Chunk(list(c.token_ids), c.text, [logprob_from_proto(lp) for lp in c.logprobs],
                     prompt_logprobs_from_proto(c.prompt_logprobs))
    f = response.final
    return Final(f.finish_reason, f.usage.prompt_tokens, f.usage.completion_tokens, f.usage.cached_tokens,
                 f.timings.ttft_s, f.timings.e2e_s, f.request_id, f.prefill_node, f.decode_node)


def collect(events, prompt_logprobs: int | None = None) -> Result:
    """The events of one request as its Result; `prompt_logprobs` as asked (a one-token prompt's one entry, None,
    does not travel)."""
    chunks = [e for e in events if isinstance(e, Chunk)]
    final = next(e for e in events if isinstance(e, Final))
    entries = next((c.prompt_logprobs for c in chunks if c.prompt_logprobs is not None), None)
    if entries is None and prompt_logprobs is not None:
        entries = [None] * final.prompt_tokens
    return Result([t for c in chunks for t in c.token_ids], "".join(c.text for c in chunks), final, entries)


def embed_request(inputs: list[str | list[int]], pooling: str = "", normalize: bool = True,
                  priority: int = 0, cache_salt: str | None = None) -> router_pb2.EmbedRequest:
    """Each input a text or a list of token ids; pooling "last" or "mean" (empty: the router's default)."""
    items = [router_pb2.EmbedInput(text=i) if isinstance(i, str) else
             router_pb2.EmbedInput(token_ids=router_pb2.TokenIds(ids=i)) for i in inputs]
    return router_pb2.EmbedRequest(inputs=items, pooling=pooling, no_normalize=not normalize, priority=priority,
                                   cache_salt=cache_salt)


def _metadata(api_key: str | None):
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


def _channel(grpc_module, url: str, ca_file: str | None):
    """TLS for grpcs:// URLs or with ca_file (the CA that signed the router's certificate)."""
    address = parse_url(url)
    if ca_file is None and not url.startswith("grpcs://"):
        return grpc_module.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc_module.secure_channel(address, channel_credentials(ca_file), options=CHANNEL_OPTIONS)


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float | None = None,
                 ca_file: str | None = None):
        self.channel = _channel(grpc, url, ca_file)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self.api_key, self.timeout_s = api_key, timeout_s

    def generate(self, **kwargs):
        """Yields Chunk events, then one Final. Raises grpc.RpcError with the status code on failure."""
        for response in self.stub.Generate(build_request(**kwargs), timeout=self.timeout_s, metadata=_metadata(self.api_key)):
            yield _event(response)

    def complete(self, **kwargs) -> Result:
        return collect(list(self.generate(**kwargs)), kwargs.get("prompt_logprobs"))

    def embed(self, inputs: list[str | list[int]], **kwargs) -> list[list[float]]:
        """One embedding per input (embed_request's keywords), in order."""
        reply = self.stub.Embed(embed_request(inputs, **kwargs), timeout=self.timeout_s,
                                metadata=_metadata(self.api_key))
        return [list(e.values) for e in reply.embeddings]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float | None = None,
                 ca_file: str | None = None):
        self.channel = _channel(grpc.aio, url, ca_file)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self.api_key, self.timeout_s = api_key, timeout_s

    async def generate(self, **kwargs):
        call = self.stub.Generate(build_request(**kwargs), timeout=self.timeout_s, metadata=_metadata(self.api_key))
        async for response in call:
            yield _event(response)

    async def complete(self, **kwargs) -> Result:
        return collect([e async for e in self.generate(**kwargs)], kwargs.get("prompt_logprobs"))

    async def embed(self, inputs: list[str | list[int]], **kwargs) -> list[list[float]]:
        reply = await self.stub.Embed(embed_request(inputs, **kwargs), timeout=self.timeout_s,
                                      metadata=_metadata(self.api_key))
        return [list(e.values) for e in reply.embeddings]

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
