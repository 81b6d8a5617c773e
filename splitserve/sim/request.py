"""A simulated request: what the client asked, where it is on its node, what the client saw."""

from __future__ import annotations

import gc
from contextlib import contextmanager


class SimRequest:
    """Counters follow splitserve/engine/request.py (num_tokens, num_computed, blocks, outputs);
    the lazy decode fields (dbase, tok_base, out_base, dgen, gbase, gfirst) belong to node.py."""

    __slots__ = ("rid", "prompt_tokens", "target", "arrival_s", "cached_tokens", "hash_ids", "num_tokens",
                 "num_computed", "blocks", "seq", "outputs", "dbase", "tok_base", "out_base", "dgen", "gbase", "gfirst",
                 "done_here",
                 "prefill_only", "first_token_s", "finish_s", "error", "retries", "full", "route", "reserved",
                 "prefill_node", "decode_node", "sent_tokens")

    def __init__(self, rid: int, prompt_tokens: int, target: int, arrival_s: float, cached_tokens: int = 0,
                 hash_ids: tuple[int, ...] = ()):
        if prompt_tokens < 1 or target < 1:
            raise ValueError(f"request {rid}: prompt and output lengths must be >= 1, got {prompt_tokens}, {target}")
        self.rid, self.prompt_tokens, self.target, self.arrival_s = rid, prompt_tokens, target, arrival_s
        self.cached_tokens, self.hash_ids = cached_tokens, hash_ids
        self.num_tokens = self.num_computed = self.blocks = self.seq = self.outputs = 0
        self.dbase = self.tok_base = self.out_base = self.dgen = self.gbase = self.gfirst = 0
        self.done_here = self.prefill_only = False
        self.first_token_s = self.finish_s = None
        self.error = ""
        self.retries, self.full, self.route, self.reserved = 0, set(), None, 0
        self.prefill_node = self.decode_node = None
        self.sent_tokens = prompt_tokens  # whose KV the transfer moves: the prompt's after what the decode node held

    def __hash__(self) -> int:
        return self.rid

    def __eq__(self, other) -> bool:
        return self is other

    def __lt__(self, other: "SimRequest") -> bool:
        return self.rid < other.rid


@contextmanager
def gc_paused():
    """The cyclic garbage collector off for a block that allocates millions of objects and frees
    none in cycles (a simulation, its requests): its full collections would walk every live
    request again and again. Restored as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
