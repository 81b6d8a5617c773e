"""OpenAI's embeddings API (`POST /v1/embeddings`): the request body and the response.

`input` is a text, a list of texts, a list of token ids or a list of such lists; each item is
one embedding (router/cluster/embedder.py computes them on prefill or mixed nodes). Vectors go
out as JSON floats or, with `encoding_format: base64` (what the official `openai` client asks
for unless told otherwise), as the base64 of their little-endian float32 bytes. `dimensions`
is refused unless it is the model's own size: a model not trained for shortened (Matryoshka)
embeddings has none to give. Extensions: vLLM's `normalize` (false: the pooled vector as it
is), `truncate_prompt_tokens` (keep the last k tokens; -1: the context length), `add_special_tokens`
(false: no BOS before a text) and `priority` (lower runs sooner), and `pooling` (`last` or `mean`; default: the
router's --embedding-pooling).
"""

from __future__ import annotations

import base64
import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict

from router.front.openai_models import InvalidRequest, checked_priority, checked_truncate, parse_body
from splitserve.engine.pooling import PoolingParams

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    normalize: bool = True
    pooling: Literal["last", "mean"] | None = None
    truncate_prompt_tokens: int | None = None
    priority: int = 0  # vLLM's: lower runs sooner
    cache_salt: str | None = None  # vLLM's: shares cached KV only with requests of the same salt
    add_special_tokens: bool = True  # vLLM's: the tokenizer's special tokens (e.g. BOS) go with a text input

    @classmethod
    def parse(cls, body: bytes) -> "EmbeddingRequest":
        return parse_body(cls, body)

    def check_supported(self, embedding_size: int) -> None:
        checked_priority(self.priority)
        if self.dimensions is not None and self.dimensions != embedding_size:
            raise InvalidRequest(f"dimensions: this model's embeddings have {embedding_size} dimensions and cannot "
                                 "be shortened (it was not trained for Matryoshka embeddings)", "dimensions")
        checked_truncate(self.truncate_prompt_tokens)

    def pooling_params(self, default_pooling: str) -> PoolingParams:
        """ValueError (-> 400) for a priority or a cache_salt out of range."""
        return PoolingParams(self.pooling or default_pooling, self.normalize, self.priority, self.cache_salt)

    def inputs(self) -> list[dict]:
        """Frontend.embedding_input keywords of each item: `prompt` (text) or `token_ids`."""
        given = self.input
        if given == [] or given == "":
            raise InvalidRequest("input must not be empty", "input")
        items = given if isinstance(given, list) and not isinstance(given[0], int) else [given]
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(items)}", "input")
        return [{"prompt": item} if isinstance(item, str) else {"token_ids": list(item)} for item in items]


def encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings_body(vectors: list[list[float]], encoding_format: str, model: str, prompt_tokens: int) -> dict:
    data = [{"object": "embedding", "index": i, "embedding": encoded(v, encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
