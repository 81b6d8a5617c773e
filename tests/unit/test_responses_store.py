"""The Responses API's store of responses (router memory): bounded by count and by bytes, least
recently used dropped first; and a response's output as the chat turn a continuation sees."""

from router.front.responses_format import answer_messages
from router.front.responses_store import ResponseStore


def response(rid: str, text: str = "hi") -> dict:
    return {"id": rid, "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]}


def test_least_recently_used_goes_first_when_full():
    store = ResponseStore(max_entries=2)
    store.put(response("a"), [])
    store.put(response("b"), [])
    assert store.get("a") is not None  # a is now the most recently used
    store.put(response("c"), [])
    assert store.get("b") is None and store.get("a") and store.get("c") and len(store) == 2


def test_bytes_bound_and_deletes_keep_the_count_right():
    store = ResponseStore(max_bytes=400)
    for i in range(5):
        store.put(response(str(i), "x" * 60), [{"role": "user", "content": "y" * 20}])
    assert 0 < store.num_bytes <= 400 and store.get("4") and store.get("0") is None
    store.put(response("huge", "x" * 1000), [])  # larger than the whole store: not kept, nothing dropped for it
    assert store.get("huge") is None and store.get("4")
    assert store.delete("4") and not store.delete("4")
    store.put(response("3", "again"), [])  # a replaced entry's bytes leave with it
    assert store.get("3").response == response("3", "again")
    assert store.num_bytes == sum(entry.size for entry in store._entries.values())


def test_answer_messages_are_the_text_or_the_calls():
    assert answer_messages(response("r", "Paris.")["output"]) == [{"role": "assistant", "content": "Paris."}]
    calls = [{"type": "function_call", "call_id": f"call_{i}", "name": "f", "arguments": "{}"} for i in range(2)]
    assert answer_messages(calls) == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in range(2)]}]
