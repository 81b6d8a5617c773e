"""Documents as first-class prompt parts, shared by the router (requests) and nodes (ingest).

A document's chunk is its text plus a blank line, tokenized alone (no special tokens), so the
same passage has the same token ids, hence the same key, in every prompt. A text prompt is the
tokenizer's special prefix (e.g. BOS), the chunks in order, then the question. A chat prompt
puts the chunks at the start of the last user message's content, inside the chat template:

    [head: template up to that content (+ lead)] [chunk 1] ... [chunk k] [tail: the content, the rest]

(the template is rendered around a sentinel and split there, so head and tail are exactly what
the template makes of the messages).
"""

from __future__ import annotations

SEPARATOR = "\n\n"
_SENTINEL = "\x00DOCUMENTS\x00"


def special_prefix(tokenizer) -> list[int]:
    return tokenizer.encode("", add_special_tokens=True)


def document_head(tokenizer) -> list[int]:
    """What a document stored ahead of any request (ingest) is computed after: the head a chat request
    with one user message puts before its first document (the template's header, e.g. a default system
    prompt: the attention sink the served chunk sits behind), or the special prefix without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return special_prefix(tokenizer)
    return chat_head_and_tail(tokenizer, [{"role": "user", "content": ""}])[0]


def chunk_token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text + SEPARATOR, add_special_tokens=False)


def assemble(prefix: list[int], chunks: list[list[int]], tail: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """-> prompt ids and (start, length) of each chunk in them."""
    ids, spans = list(prefix), []
    for chunk in chunks:
        spans.append((len(ids), len(chunk)))
        ids += chunk
    return ids + list(tail), spans


def document_prompt(tokenizer, documents: list[str], prompt: str,
                    special: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """`special`: the tokenizer's special prefix goes first (a request's add_special_tokens)."""
    chunks = [chunk_token_ids(tokenizer, d) for d in documents]
    prefix = special_prefix(tokenizer) if special else []
    return assemble(prefix, chunks, tokenizer.encode(prompt, add_special_tokens=False))


def chat_head_and_tail(tokenizer, messages: list[dict], lead: str = "",
                       chat_format=None) -> tuple[list[int], list[int]]:
    """Ids of the chat template before and after the documents' place in the last user message
    (`chat_format`: tokenizer.ChatFormat, None for the default)."""
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("documents go inside the last message, which must be from the user")
    last = {**messages[-1], "content": lead + _SENTINEL + (messages[-1].get("content") or "")}
    text = tokenizer.apply_chat_template([*messages[:-1], last], chat_format=chat_format)
    if text.count(_SENTINEL) != 1:
        raise ValueError("cannot place documents inside the chat template's last user message "
                         "(the template dropped or repeated it)")
    head, _, tail = text.partition(_SENTINEL)
    return tokenizer.encode(head, add_special_tokens=False), tokenizer.encode(tail, add_special_tokens=False)


def chat_document_prompt(tokenizer, messages: list[dict], documents: list[str],
                         chat_format=None) -> tuple[list[int], list[tuple[int, int]]]:
    head, tail = chat_head_and_tail(tokenizer, messages, chat_format=chat_format)
    return assemble(head, [chunk_token_ids(tokenizer, d) for d in documents], tail)


def validate_spans(spans: list[tuple[int, int]], num_tokens: int) -> None:
    """Spans must be non-empty, in order, not overlapping, inside the prompt; raises ValueError."""
    end = 0
    for start, length in spans:
        if length < 1 or start < end or start + length > num_tokens:
            raise ValueError(f"bad chunk span (start={start}, length={length}) for a {num_tokens}-token prompt: "
                             "spans must be non-empty, ordered, disjoint and inside the prompt")
        end = start + length
