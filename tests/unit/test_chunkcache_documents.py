"""Documents as first-class prompt parts: spans and keys."""

from __future__ import annotations

import pytest

from router.front.intake import Frontend
from splitserve.chunkcache.documents import SEPARATOR, chat_document_prompt, chunk_token_ids, validate_spans
from splitserve.chunkcache.keys import content_hash
from splitserve.chunkcache.qa_prompt import QUERY, qa_prompt


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
    with pytest.raises(ValueError, match="not with prompt token ids"):  # not silently dropped
        frontend.prompt_and_chunks(documents=["alpha"], token_ids=[5, 6])


CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Which river is the longest?"}]
DOCS = ["The Nile flows north into the Mediterranean.", "The Amazon\ncarries more water than any other river."]


@pytest.mark.parametrize("model", ["tiny_model", "smollm2_model"])
def test_chat_documents_render_as_hf_chat_template(model, request):
    """Documents at the start of the last user message: the text is HF's apply_chat_template of the
    messages with the documents written there; head, chunks and tail are HF's ids of their parts."""
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue(model)
    ids, spans = Frontend.from_model_dir(model_dir).prompt_and_chunks(messages=CHAT, documents=DOCS)
    hf = AutoTokenizer.from_pretrained(model_dir)
    content = "".join(d + SEPARATOR for d in DOCS) + CHAT[-1]["content"]
    text = hf.apply_chat_template([*CHAT[:-1], {"role": "user", "content": content}], add_generation_prompt=True,
                                  tokenize=False)
    assert hf.decode(ids) == text
    head, rest = text.split(DOCS[0], 1)
    tail = rest.split(DOCS[-1] + SEPARATOR, 1)[1]
    encode = lambda t: hf.encode(t, add_special_tokens=False)
    assert ids[:spans[0][0]] == encode(head) and ids[sum(spans[-1]):] == encode(tail)
    assert [ids[s:s + n] for s, n in spans] == [encode(d + SEPARATOR) for d in DOCS]


def test_chat_documents_keep_their_keys_and_refuse_bad_messages(tiny_model):
    frontend = Frontend.from_model_dir(tiny_model)
    ids, spans = frontend.prompt_and_chunks(messages=CHAT, documents=DOCS)
    other, other_spans = frontend.prompt_and_chunks(messages=CHAT[-1:], documents=DOCS[::-1])
    assert {content_hash(ids[s:s + n]) for s, n in spans} == {content_hash(other[s:s + n]) for s, n in other_spans}
    assert frontend.prompt_and_chunks(messages=CHAT)[1] == ()
    with pytest.raises(ValueError, match="last message, which must be from the user"):
        frontend.prompt_and_chunks(messages=CHAT[:-1], documents=DOCS)
    with pytest.raises(ValueError, match="cannot place documents"):
        frontend.prompt_and_chunks(messages=[{"role": "user", "content": "\x00DOCUMENTS\x00"}], documents=DOCS)
    with pytest.raises(ValueError, match="non-empty"):
        frontend.prompt_and_chunks(messages=CHAT, documents=["a", ""])


def test_qa_prompt_places_passages_like_the_served_chat(tiny_model):
    """The benchmark's chat prompt is the served layout with the instruction before the passages."""
    tok = Frontend.from_model_dir(tiny_model).tokenizer
    item = {"question": "Who?", "ctxs": [{"title": "A", "text": "one"}, {"title": "", "text": "two"}]}
    qa = qa_prompt(tok, item, chat=True)
    ids, spans = chat_document_prompt(tok, [{"role": "user", "content": QUERY.format(question="Who?")}],
                                      ["A\n\none", "two"])
    assert [qa.ids[s:s + n] for s, n in qa.spans] == [ids[s:s + n] for s, n in spans]
    assert qa.ids[sum(qa.spans[-1]):] == ids[sum(spans[-1]):]


def test_span_validation():
    validate_spans([(1, 3), (4, 2)], 7)
    for bad in ([(0, 0)], [(3, 2), (1, 1)], [(5, 3)]):
        with pytest.raises(ValueError):
            validate_spans(bad, 7)

