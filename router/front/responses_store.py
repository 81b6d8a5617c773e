"""Stored responses of the Responses API, for `previous_response_id` and `GET /v1/responses/{id}`.

In the router's memory, as vLLM keeps them: bounded by count and by size, the least recently
used dropped first, gone when the router restarts and not shared between router replicas
(with several, a conversation continues on the replica that stored it, or the client sends it
whole with `store: false`). Each entry is the response object and the conversation it ends:
the chat messages of its input after any earlier stored turns, and its answer (without the
instructions, which do not carry over, as on OpenAI's API).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class StoredResponse:
    response: dict
    conversation: list[dict]  # chat messages, ending with the answer
    size: int
    input_items: list[dict] = ()  # the request's own input, as GET /v1/responses/{id}/input_items lists it


class ResponseStore:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.num_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: dict, conversation: list[dict], input_items: list[dict] = ()) -> None:
        size = len(json.dumps(response)) + len(json.dumps(conversation)) + len(json.dumps(list(input_items)))
        if size > self.max_bytes:
            return
        self.delete(response["id"])
        self._entries[response["id"]] = StoredResponse(response, conversation, size, list(input_items))
        self.num_bytes += size
        while len(self._entries) > self.max_entries or self.num_bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.num_bytes -= dropped.size

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.num_bytes -= entry.size
        return entry is not None
