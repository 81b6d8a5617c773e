"""Scoring and reranking by embedding similarity: vLLM's `POST /v1/score`, and the rerank API of Jina
and Cohere (`/v1/rerank`, `/rerank`, `/v2/rerank`) as vLLM serves it for a model without a
cross-encoder head.

A pair's score is the cosine similarity of the two texts' embeddings (embeddings_api.py: the
router's --embedding-pooling, L2-normalized), each distinct text embedded once. Score: `text_1` a
text and `text_2` a list scores text_1 against each; two lists of one length score them pair by
pair. Rerank: `documents` (texts, or Jina's `{"text": ...}` objects) ordered by their score against
`query`, the best `top_n` (default all) with their index in the request and, unless
`return_documents` is false, their text. vLLM's `truncate_prompt_tokens` keeps the last that many
tokens of each text, Cohere's `max_tokens_per_doc` the first that many of each document; vLLM's
`priority` orders the embedding work on the nodes (lower runs sooner).
"""

from __future__ import annotations

import operator
import time
import uuid

from pydantic import BaseModel, ConfigDict

from router.front.embeddings_api import MAX_EMBEDDING_INPUTS
from router.front.openai_models import InvalidRequest, checked_priority, parse_body
from splitserve.engine.pooling import PoolingParams


class _Similarity(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    truncate_prompt_tokens: int | None = None
    priority: int = 0  # vLLM's: lower runs sooner

    def pooling_params(self, pooling: str) -> PoolingParams:
        """The router's pooling, normalized (cosine similarity), at the request's priority (400 out of range)."""
        checked_priority(self.priority)
        return PoolingParams(pooling, priority=self.priority)


class ScoreRequest(_Similarity):
    text_1: str | list[str]
    text_2: str | list[str]

    @classmethod
    def parse(cls, body: bytes) -> "ScoreRequest":
        return parse_body(cls, body)

    def pairs(self) -> tuple[list[str], list[tuple[int, int]]]:
        """The distinct texts to embed, and each pair as indices into them."""
        firsts = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        seconds = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if not firsts or not seconds:
            raise InvalidRequest("text_1 and text_2 must not be empty", "text_1" if not firsts else "text_2")
        if len(firsts) not in (1, len(seconds)):
            raise InvalidRequest(f"text_1 must be one text or as many as text_2 ({len(seconds)}), got {len(firsts)}",
                                 "text_1")
        firsts = firsts * len(seconds) if len(firsts) == 1 else firsts
        texts = distinct(firsts + seconds)
        return texts, [(texts.index(a), texts.index(b)) for a, b in zip(firsts, seconds)]


class RerankRequest(_Similarity):
    query: str
    documents: list[str | dict]
    top_n: int | None = None
    return_documents: bool = True
    max_tokens_per_doc: int | None = None  # Cohere's

    @classmethod
    def parse(cls, body: bytes) -> "RerankRequest":
        return parse_body(cls, body)

    def texts(self) -> list[str]:
        """The query, then each document's text."""
        if not 0 < len(self.documents) <= MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(f"documents: 1 to {MAX_EMBEDDING_INPUTS} per request, got {len(self.documents)}",
                                 "documents")
        if self.top_n is not None and self.top_n < 0:
            raise InvalidRequest(f"top_n must be >= 0 (0: all), got {self.top_n}", "top_n")
        if self.max_tokens_per_doc is not None and self.max_tokens_per_doc < 1:
            raise InvalidRequest(f"max_tokens_per_doc must be >= 1, got {self.max_tokens_per_doc}",
                                 "max_tokens_per_doc")
        return [self.query] + [_document_text(d, f"documents.{i}") for i, d in enumerate(self.documents)]


def _document_text(document: str | dict, param: str) -> str:
    text = document if isinstance(document, str) else document.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{param} must be a text or an object with a text", param)
    return text


def distinct(texts: list[str]) -> list[str]:
    if len(set(texts)) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"at most {MAX_EMBEDDING_INPUTS} distinct texts per request, got {len(set(texts))}")
    return list(dict.fromkeys(texts))


def similarity(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two L2-normalized vectors."""
    return sum(map(operator.mul, a, b))


def score_body(model: str, vectors: list[list[float]], pairs: list[tuple[int, int]], prompt_tokens: int) -> dict:
    data = [{"index": i, "object": "score", "score": similarity(vectors[a], vectors[b])}
            for i, (a, b) in enumerate(pairs)]
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def rerank_body(model: str, body: RerankRequest, texts: list[str], vectors: list[list[float]], tokens: int) -> dict:
    results = [{"index": i, "relevance_score": similarity(vectors[0], v)} for i, v in enumerate(vectors[1:])]
    results.sort(key=lambda r: -r["relevance_score"])
    if body.return_documents:
        for r in results:
            r["document"] = {"text": texts[r["index"] + 1]}
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": model, "results": results[:body.top_n or None],
            "usage": {"total_tokens": tokens}, "meta": {"billed_units": {"search_units": 1}}}
