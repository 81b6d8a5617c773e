"""Documents as first-class prompt parts: spans and keys."""

from __future__ import annotations

import pytest

from router.front.intake import Frontend
from splitserve.chunkcache.documents import chunk_token_ids, validate_spans
from splitserve.chunkcache.keys import content_hash


def test_router_sends_each_document_as_a_span(tiny_model):
    frontend = Frontend.from_model_dir(tiny_model)
    tok = frontend.tokenizer
    ids, spans = frontend.prompt_and_chunks(prompt="why?", documents=["alpha beta", "gamma"])
    assert ids[:1] == tok.encode("") and len(spans) == 2
    for (start, length), doc in zip(spans, ["alpha beta", "gamma"]):
        assert ids[start:start + length] == chunk_token_ids(tok, doc)
    swapped, swapped_spans = frontend.prompt_and_chunks(prompt="other", documents=["gamma", "alpha beta"])
    assert {content_hash(ids[s:s + n]) for s, n in spans} == {content_hash(swapped[s:s + n]) for s, n in swapped_spans}
    job = frontend.job(ids, __import__("splitserve.engine", fromlist=["SamplingParams"]).SamplingParams(max_tokens=2),
                       chunks=spans)
    assert job.chunks == spans
    assert frontend.prompt_ids(prompt="why?", documents=["alpha beta", "gamma"]) == ids
    with pytest.raises(ValueError):
        frontend.prompt_and_chunks(prompt="x", documents=[""])
    for other in (dict(token_ids=[5, 6]), dict(messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(ValueError, match="documents go with a text prompt"):  # not silently dropped
            frontend.prompt_and_chunks(documents=["alpha"], **other)


def test_span_validation():
    validate_spans([(1, 3), (4, 2)], 7)
    for bad in ([(0, 0)], [(3, 2), (1, 1)], [(5, 3)]):
        with pytest.raises(ValueError):
            validate_spans(bad, 7)

