"""Receives a decode node posts for a request when it reserves it (torch backend, wire v6).

The decode node knows a request's layout when it reserves its blocks, and the router names the
prefill node that will send it. If this receiver already has a pair with that sender, it posts
the receives of the request's first messages (`wire.prepost_plan`) on a tag of its own, and the
tag goes to the prefill node with the reservation: the sender then posts those payloads right
behind their header, with no ack to wait for, and gloo writes them at once. That takes the
header's round trip (about 1.5 ms of an 8 MB transfer here) out of the transfer.

gloo cannot cancel a posted receive: one whose sender never comes keeps its buffer until the
pair closes. A sender that aborts a tagged request fills the receives it did not use (FILL
entries); for the rest (a prefill that timed out, a router that died between the two calls)
the bytes posted ahead on a pair are bounded by BUDGET_BYTES: past it a request gets no tag,
and once half of it belongs to requests that ended, the receiver closes the pair (the sender
forms a new one, `torch_sender`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import torch

from splitserve.kvtransfer.base import TransferMeta
from splitserve.kvtransfer.wire import LayerHeader, prepost_plan
from splitserve.node_api import PostedRecvs

BUDGET_BYTES = 256 << 20  # per pair: sixteen requests' first 16 MB


@dataclass(frozen=True)
class Ready:
    """One message's receive, posted ahead: layers [first, end), `nbytes`, into `buffer`."""

    first: int
    nbytes: int
    buffer: torch.Tensor  # uint8 [message_bytes] from the pair's pool: every receive holds a whole message
    works: list


@dataclass
class _Request:
    request_id: str
    messages: deque[Ready]


class PostedAhead:
    """One pair's receives posted ahead, by tag. `post` runs on a reserving thread, `take` on the
    pair's thread."""

    def __init__(self, link, pool) -> None:
        self.link = link  # torch_pair.PairLink
        self.pool = pool  # torch_receiver._BufferPool (thread-safe)
        self._lock = threading.Lock()
        self._by_tag: dict[int, _Request] = {}
        self.nbytes = 0

    def post(self, meta: TransferMeta, tag: int) -> PostedRecvs | None:
        """Post the receives of `meta`'s first messages on `tag`, each the size of a whole message (a
        smaller message lands in it; a larger one would abort the process); None if the budget is spent."""
        posted = prepost_plan(meta, tag)
        nbytes = posted.num_messages * posted.message_bytes
        with self._lock:
            if self.nbytes + nbytes > BUDGET_BYTES:
                return None
            self.nbytes += nbytes
        messages: deque[Ready] = deque()
        try:
            for first, end in posted.messages():
                buffer = self.pool.take(posted.message_bytes)
                messages.append(Ready(first, (end - first) * meta.layer_nbytes, buffer,
                                      self.link.post_payload(buffer, tag)))
        finally:  # on a failure the pair is broken: its posted receives fail with it
            with self._lock:
                self._by_tag[tag] = _Request(meta.request_id, messages)
        return posted

    def take(self, message: list[LayerHeader]) -> Ready | None:
        """The receive posted ahead for this message of the header (its entries share a tag), or None
        if it is not one (`ahead`) or none was posted on this pair. ValueError if it is not the one
        posted next."""
        tag = message[0].tag
        with self._lock:
            request = self._by_tag.get(tag) if message[0].ahead else None
            if request is None:
                return None
            ready = request.messages[0]
            nbytes = sum(entry.nbytes for entry in message)
            if message[0].layer != ready.first or nbytes != ready.nbytes:
                raise ValueError(f"KV header: a message of tag {tag} (layer {message[0].layer}, {nbytes} bytes) "
                                 f"is not the one posted ahead (layer {ready.first}, {ready.nbytes} bytes)")
            request.messages.popleft()
            self.nbytes -= ready.buffer.numel()
            if not request.messages:
                del self._by_tag[tag]
            return ready

    def stale_bytes(self, is_live) -> int:
        """Bytes posted ahead for requests `is_live(request_id)` says ended."""
        with self._lock:
            return sum(ready.buffer.numel() for request in self._by_tag.values() if not is_live(request.request_id)
                       for ready in request.messages)
