"""Answer-quality scores for chunk-cache reuse, the way CacheBlend and Cache-Craft report them.

- `answer_f1`: SQuAD token F1 after SQuAD's normalisation (lowercase, no punctuation, no
  articles, single spaces), on the answer's first line, best over the gold answers (CacheBlend).
- `rouge_l_f1`: ROUGE-L F1 (longest common subsequence of normalised words) between two answers;
  Cache-Craft judges an answer with reuse by its ROUGE-L against the answer without reuse.
- `first_token_scores`: KL(full || reuse) of the next-token distributions and top-1 agreement.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import torch

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_line(text: str) -> str:
    lines = [line for line in text.strip().split("\n") if line.strip()]
    return lines[0] if lines else ""


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_f1(prediction: str, golds: list[str]) -> float:
    if not golds:
        raise ValueError("answer_f1 needs at least one gold answer")
    return max(token_f1(first_line(prediction), gold) for gold in golds)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    """Two empty answers agree (1.0); one empty answer shares nothing (0.0)."""
    cand, ref = normalize_answer(candidate).split(), normalize_answer(reference).split()
    if not cand or not ref:
        return float(cand == ref)
    lcs = _lcs(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def first_token_scores(full_logits: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """full_logits, logits: [vocab] -> {"kl": KL(full || reuse), "top1": 1.0 when the argmaxes agree}."""
    p, q = full_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    return {"kl": float((p.exp() * (p - q)).sum()), "top1": float(full_logits.argmax() == logits.argmax())}
