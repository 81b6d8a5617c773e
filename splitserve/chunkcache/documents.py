"""Documents as first-class prompt parts, shared by the router (requests) and nodes (ingest).

A document's chunk is its text plus a blank line, tokenized alone (no special tokens), so the
same passage has the same token ids, hence the same key, in every prompt. A prompt is the
tokenizer's special prefix (e.g. BOS), the chunks in order, then the question.
"""

from __future__ import annotations

SEPARATOR = "\n\n"


def special_prefix(tokenizer) -> list[int]:
    return tokenizer.encode("", add_special_tokens=True)


def chunk_token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text + SEPARATOR, add_special_tokens=False)


def assemble(prefix: list[int], chunks: list[list[int]], tail: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """-> prompt ids and (start, length) of each chunk in them."""
    ids, spans = list(prefix), []
    for chunk in chunks:
        spans.append((len(ids), len(chunk)))
        ids += chunk
    return ids + list(tail), spans


def document_prompt(tokenizer, documents: list[str], prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    chunks = [chunk_token_ids(tokenizer, d) for d in documents]
    return assemble(special_prefix(tokenizer), chunks, tokenizer.encode(prompt, add_special_tokens=False))


def validate_spans(spans: list[tuple[int, int]], num_tokens: int) -> None:
    """Spans must be non-empty, in order, not overlapping, inside the prompt; raises ValueError."""
    end = 0
    for start, length in spans:
        if length < 1 or start < end or start + length > num_tokens:
            raise ValueError(f"bad chunk span (start={start}, length={length}) for a {num_tokens}-token prompt: "
                             "spans must be non-empty, ordered, disjoint and inside the prompt")
        end = start + length
