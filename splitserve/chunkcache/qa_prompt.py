"""A RAG question as CacheBlend's MuSiQue evaluation asks it: instruction, passages, question.

    [head: chat header + instruction] [passage 1] ... [passage k] [tail: question + answer cue]

With `chat=True` the whole user turn goes through the model's chat template and the passages sit
inside it, after the instruction (`documents.chat_head_and_tail`, as the served chat API places
documents); with `chat=False` the head is the tokenizer's special prefix + the instruction and the
tail ends in "Answer:". Each passage is a document chunk (`documents.chunk_token_ids`: the same
ids in every prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

from splitserve.chunkcache.documents import assemble, chat_head_and_tail, chunk_token_ids, special_prefix

INSTRUCTION = ("You will be asked a question after reading several passages. Please directly answer the question "
               "based on the given passages. Do NOT repeat the question. The answer should be within 5 words.\n"
               "Passages:\n")
QUERY = ("Answer the question directly based on the given passages. Do NOT repeat the question. "
         "The answer should be within 5 words.\nQuestion: {question}\nAnswer:")


@dataclass(frozen=True)
class QAPrompt:
    ids: list[int]
    spans: list[tuple[int, int]]  # (start, length) of each passage
    head: list[int]  # what precedes the first passage (where a passage cached alone is computed)

    @property
    def num_passage_tokens(self) -> int:
        return sum(n for _, n in self.spans)


def passage_text(ctx: dict) -> str:
    title = (ctx.get("title") or "").strip()
    return f"{title}\n\n{ctx['text']}" if title else ctx["text"]


def head_and_tail(tokenizer, question: str, chat: bool) -> tuple[list[int], list[int]]:
    query = QUERY.format(question=question.strip())
    if not chat:
        head = special_prefix(tokenizer) + tokenizer.encode(INSTRUCTION, add_special_tokens=False)
        return head, tokenizer.encode(query, add_special_tokens=False)
    return chat_head_and_tail(tokenizer, [{"role": "user", "content": query}], lead=INSTRUCTION)


def qa_prompt(tokenizer, item: dict, chat: bool, num_passages: int | None = None) -> QAPrompt:
    """item: {"question": str, "ctxs": [{"title", "text"}, ...]} (CacheBlend's musique_s format)."""
    ctxs = item["ctxs"][:num_passages]
    if not ctxs:
        raise ValueError("a RAG question needs at least one passage")
    head, tail = head_and_tail(tokenizer, item["question"], chat)
    ids, spans = assemble(head, [chunk_token_ids(tokenizer, passage_text(c)) for c in ctxs], tail)
    return QAPrompt(ids, spans, head)
