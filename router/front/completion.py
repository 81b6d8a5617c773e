"""A routed Job's events as text: what the gRPC and HTTP fronts both send.

`completion()` runs the job through the orchestrator, detokenizes incrementally, applies the
stop strings (the nodes never see them), and yields `Piece`s and then one `Finish`. A stop
string ends the run early: closing the orchestrator's iterator cancels the node calls, as
does closing this iterator (client gone, deadline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from splitserve.engine import Tokenizer
from splitserve.engine.textstream import TextStream
from router.cluster.orchestrator import Done, Job, Orchestrator
from router.cluster.policies import Route


@dataclass
class Piece:
    token_ids: list[int]
    text: str
    logprobs: list = field(default_factory=list)  # one (logprob, [(token_id, logprob)]) per token
    prompt_logprobs: list | None = None  # params.prompt_logprobs, on the first piece: one per prompt token, first None


@dataclass
class Finish:
    reason: str
    num_completion_tokens: int
    done: Done
    ttft_s: float
    e2e_s: float
    stop_string: str | None = None  # the stop string that ended the text (reason "stop"), if one did


async def completion(tokenizer: Tokenizer, orchestrator: Orchestrator, job: Job, route: Route,
                     start: float | None = None) -> AsyncIterator[Piece | Finish]:
    start = time.monotonic() if start is None else start
    text = TextStream.for_params(tokenizer, job.prompt_token_ids, job.params)
    num_tokens, ttft = 0, 0.0
    events = orchestrator.run(job, route)
    try:
        async for event in events:
            if isinstance(event, Done):
                rest = text.finish()
                if rest:
                    yield Piece([], rest)
                reason = "stop" if text.stopped else event.finish_reason
                yield Finish(reason, num_tokens, event, ttft, time.monotonic() - start, text.stop_string)
                return
            ttft = ttft or time.monotonic() - start
            num_tokens += len(event.token_ids)
            yield Piece(event.token_ids, text.add(event.token_ids), event.logprobs, event.prompt_logprobs)
            if text.stopped:
                yield Finish("stop", num_tokens, Done("stop", 0, route), ttft, time.monotonic() - start,
                             text.stop_string)
                return
    finally:
        await events.aclose()
