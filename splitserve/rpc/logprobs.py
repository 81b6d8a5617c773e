"""Logprob entries <-> protobuf, without the engine (the gRPC client imports this, not torch).

An entry is (logprob, [(token_id, logprob), ...]) (the top-k); a prompt token's entry also has its rank in the
vocabulary, (logprob, top, rank) (vLLM's prompt_logprobs report it). A request's prompt logprobs are one entry
per prompt token with None for the first (nothing precedes it), sent as tokens 1 .. n-1.
"""

from __future__ import annotations

from splitserve.api.v1 import common_pb2


def logprob_to_proto(entry) -> common_pb2.TokenLogprob:
    top = [common_pb2.TopLogprob(token_id=t, logprob=v) for t, v in entry[1]]
    return common_pb2.TokenLogprob(logprob=entry[0], top=top, rank=entry[2] if len(entry) > 2 else 0)


def logprob_from_proto(msg: common_pb2.TokenLogprob) -> tuple:
    top = [(t.token_id, t.logprob) for t in msg.top]
    return (msg.logprob, top, msg.rank) if msg.rank else (msg.logprob, top)


def prompt_logprobs_to_proto(entries: list | None) -> list[common_pb2.TokenLogprob]:
    """Prompt logprobs (entry 0 None) -> tokens 1 .. n-1 on the wire; [] when there are none."""
    return [logprob_to_proto(entry) for entry in (entries or [None])[1:]]


def prompt_logprobs_from_proto(messages) -> list | None:
    """Tokens 1 .. n-1 from the wire -> entries with the first token's None in front; None when there are none."""
    return [None] + [logprob_from_proto(m) for m in messages] if messages else None
