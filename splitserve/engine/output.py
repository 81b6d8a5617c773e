"""Per-request output bookkeeping: incremental text, stop strings, and what is new since the last step."""

from __future__ import annotations

from dataclasses import dataclass, field

from splitserve.engine.request import Request
from splitserve.engine.textstream import TextStream
from splitserve.engine.tokenizer import Tokenizer


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    new_logprobs: list = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    prompt_logprobs: list | None = None  # params.prompt_logprobs: on the output that ends the prompt (see Request)
    embedding: list[float] | None = None  # an embedding request's vector: on its finished output


@dataclass
class Completion:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list = field(default_factory=list)
    num_cached_tokens: int = 0
    prompt_logprobs: list | None = None


@dataclass
class _Progress:
    request: Request
    text: TextStream
    pending_text: str = ""
    num_sent_tokens: int = 0
    finished: bool = False
    prompt_logprobs_sent: bool = False


class OutputTracker:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.progress: dict[str, _Progress] = {}
        self.dirty: list[str] = []

    def start(self, req: Request) -> None:
        stream = TextStream.for_params(self.tokenizer, req.all_token_ids, req.params)
        self.progress[req.request_id] = _Progress(req, stream)

    def add_token(self, req: Request, token_id: int) -> bool:
        """Adds a sampled token's text; True if a stop string appeared (text is cut before it)."""
        prog = self.progress[req.request_id]
        prog.pending_text += prog.text.add([token_id])
        self._mark(req.request_id)
        return prog.text.stopped

    def finish(self, req: Request) -> None:
        prog = self.progress[req.request_id]
        prog.pending_text += prog.text.finish()
        prog.finished = True
        self._mark(req.request_id)

    def mark_sent(self, req: Request) -> None:
        """The tokens so far were delivered elsewhere (a decode node's first token came from prefill)."""
        prog = self.progress[req.request_id]
        prog.num_sent_tokens = len(req.output_token_ids)
        prog.pending_text = ""

    def _mark(self, request_id: str) -> None:
        if request_id not in self.dirty:
            self.dirty.append(request_id)

    def drain(self) -> list[RequestOutput]:
        outs = [self._output(self.progress[rid]) for rid in self.dirty]
        self.dirty = []
        return [o for o in outs if o.new_token_ids or o.new_text or o.finished]

    def _output(self, prog: _Progress) -> RequestOutput:
        req = prog.request
        tokens = req.output_token_ids[prog.num_sent_tokens:]
        logprobs = req.logprobs[prog.num_sent_tokens:]
        new_text, prog.pending_text = prog.pending_text, ""
        prog.num_sent_tokens = len(req.output_token_ids)
        if prog.finished:
            del self.progress[req.request_id]
        reason = req.finish_reason.value if prog.finished else None
        prompt_logprobs = None
        if req.prompt_logprobs_done and not prog.prompt_logprobs_sent:
            prompt_logprobs, prog.prompt_logprobs_sent = req.prompt_logprobs, True
        return RequestOutput(req.request_id, tokens, new_text, prog.finished, reason, logprobs,
                             req.num_prompt_tokens, req.num_output_tokens, req.num_cached_tokens, prompt_logprobs,
                             req.embedding if prog.finished else None)


def collect(outputs: list[RequestOutput], prompt_token_ids: list[int]) -> Completion:
    """Joins one request's stream of outputs into its completion."""
    last = outputs[-1]
    return Completion(
        last.request_id, list(prompt_token_ids), [t for o in outputs for t in o.new_token_ids],
        "".join(o.new_text for o in outputs), last.finish_reason, [lp for o in outputs for lp in o.new_logprobs],
        last.num_cached_tokens, next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None),
    )
