"""Prompts and a streamed chat request shared by the decode benchmarks that compare two engine settings on the real
model (speculative_ngram.py, kv_cache_dtype.py): workloads from CacheBlend's MuSiQue passages (../shared/data/traces)
and open-ended chat instructions, and one request's TTFT / TPOT through the official `openai` client."""

from __future__ import annotations

import time

from splitserve.bench import traces

CHAT = ["Write a short story about a cat who learns to swim.", "Explain how a bicycle works.",
        "List five fruits and say one thing about each.", "Give me advice for my first day at a new job.",
        "Describe a sunset over the sea.", "What are the benefits of regular exercise?",
        "Write a poem about autumn leaves.", "How do airplanes stay in the air?"]


def workloads(count: int) -> dict[str, list[str]]:
    questions = traces.load_musique(traces.data_file(traces.MUSIQUE_FILE))[:count]
    first = [passages[0] for _, passages in questions]
    return {"quote": [f"Repeat the following passage exactly:\n\n{p}" for p in first],
            "summarize": [f"Summarize the following passage in two sentences:\n\n{p}" for p in first],
            "rag_qa": ["\n\n".join(passages[:3]) + f"\n\nUsing the passages above, answer in a sentence or two: {q}"
                       for q, passages in questions],
            "chat": [CHAT[i % len(CHAT)] for i in range(count)]}


def ask_streamed(client, model: str, text: str | list[dict], max_tokens: int) -> dict:
    """One greedy chat request (a user message, or the whole message list), streamed: TTFT, TPOT, end to end, the
    answer and the prompt tokens the server took from a cache."""
    messages = [{"role": "user", "content": text}] if isinstance(text, str) else text
    start = time.perf_counter()
    first, chunks, tokens, cached, prompt_tokens = None, [], 0, 0, 0
    stream = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                            max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            tokens, prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
            details = chunk.usage.prompt_tokens_details
            cached = details.cached_tokens if details is not None else 0
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            chunks.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    return {"ttft_ms": (first - start) * 1000, "tpot_ms": (end - first) * 1000 / max(1, tokens - 1),
            "e2e_s": end - start, "text": "".join(chunks), "cached_tokens": cached, "completion_tokens": tokens,
            "prompt_tokens": prompt_tokens}
