"""Answer scores (SQuAD F1, ROUGE-L, first-token KL) and the RAG question prompt of the quality benchmark."""

from __future__ import annotations

import math

import pytest
import torch

from splitserve.chunkcache.documents import chunk_token_ids
from splitserve.chunkcache.qa_prompt import passage_text, qa_prompt
from splitserve.chunkcache.quality import answer_f1, first_token_scores, normalize_answer, rouge_l_f1, token_f1
from splitserve.engine.tokenizer import Tokenizer


def test_squad_normalisation_and_f1():
    assert normalize_answer("The  Exeter College!") == "exeter college"
    assert token_f1("Exeter College, Oxford", "Exeter College") == pytest.approx(0.8)
    assert token_f1("an apple", "the") == 0.0  # articles only: nothing in common
    assert answer_f1("Exeter College\nbecause ...", ["Oxford", "exeter college"]) == 1.0  # first line, best gold
    with pytest.raises(ValueError):
        answer_f1("x", [])


def test_rouge_l_is_lcs_f1():
    assert rouge_l_f1("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # words (articles dropped): [cat, sat, on, mat] vs [cat, on, mat]: LCS 3
    assert rouge_l_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert rouge_l_f1("y x", "x y") == pytest.approx(0.5)  # order matters, unlike token F1
    assert token_f1("y x", "x y") == 1.0
    assert rouge_l_f1("", "") == 1.0 and rouge_l_f1("x", "") == 0.0 and rouge_l_f1("x", "y") == 0.0


def test_first_token_scores():
    logits = torch.tensor([2.0, 1.0, 0.0])
    same = first_token_scores(logits, logits.clone())
    assert same["kl"] == pytest.approx(0.0, abs=1e-7) and same["top1"] == 1.0
    other = first_token_scores(logits, torch.tensor([0.0, 1.0, 2.0]))
    p = logits.softmax(-1)
    assert other["top1"] == 0.0
    assert other["kl"] == pytest.approx(float((p * (p.log() - p.flip(0).log())).sum()), rel=1e-5) and other["kl"] > 0
    assert math.isfinite(other["kl"])


ITEM = {"question": "Who wrote it? ", "answers": ["Nabbes"],
        "ctxs": [{"title": "", "text": "first passage"}, {"title": "Play", "text": "second passage"},
                 {"title": "", "text": "third"}]}


@pytest.mark.parametrize("chat", [True, False])
def test_qa_prompt_places_passages_as_chunks(tiny_model, chat):
    tok = Tokenizer.from_dir(tiny_model)
    qa = qa_prompt(tok, ITEM, chat, num_passages=2)
    assert len(qa.spans) == 2 and qa.ids[:len(qa.head)] == qa.head and qa.spans[0][0] == len(qa.head)
    for (start, n), ctx in zip(qa.spans, ITEM["ctxs"]):
        assert qa.ids[start:start + n] == chunk_token_ids(tok, passage_text(ctx))
    text = tok.decode(qa.ids, skip_special_tokens=False)
    assert text.rstrip().endswith("Answer:") != chat  # the chat prompt ends in the assistant turn
    assert "Question: Who wrote it?\n" in text and "Play\n\nsecond passage" in text
    assert qa.num_passage_tokens == sum(n for _, n in qa.spans)


def test_qa_prompt_refuses_no_passages(tiny_model):
    with pytest.raises(ValueError, match="at least one passage"):
        qa_prompt(Tokenizer.from_dir(tiny_model), {**ITEM, "ctxs": []}, False)
