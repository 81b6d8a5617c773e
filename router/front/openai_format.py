"""Response bodies of the OpenAI-compatible API: whole responses and SSE stream chunks.

`CompletionShape` (`/v1/completions`, object `text_completion`) and `ChatShape`
(`/v1/chat/completions`, objects `chat.completion` / `chat.completion.chunk`) turn the
router's `Piece`s and `Finish` into OpenAI's JSON. Logprobs: completions carry
`tokens / token_logprobs / top_logprobs / text_offset`; chat carries `content: [{token,
logprob, bytes, top_logprobs}]`. Usage counts the prompt and the tokens generated
(`prompt_tokens_details.cached_tokens`: prompt tokens whose KV was reused). A request for n
choices has one shape per choice (`index`), all under one id; its usage counts each prompt once
(a completions request may carry several, each with its n choices) and every choice's tokens
(`usage(shapes, finishes)`). A completions `echo` puts the prompt in front of the choice's text
and, with `logprobs`, its tokens' logprobs in front of the generated ones (the first token's is
null); with `max_tokens: 0` the choice is the prompt alone (`Echo.scores_only`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

from splitserve.engine import Tokenizer
from router.front import tools
from router.front.completion import Finish, Piece


class TokenTexts:
    """Token id -> the text it adds after another token (memoised; special tokens kept, as logprobs show
    them). Decoded behind an anchor token: a SentencePiece tokenizer drops the space in front of a text's
    first token ("▁world" alone decodes to "world", after another token to " world")."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}
        self._anchor: list[int] | None = None  # made on first use
        self._anchor_text = ""

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            if self._anchor is None:
                self._anchor = self.tokenizer.encode("a", add_special_tokens=False)[-1:]
                self._anchor_text = self.tokenizer.decode(self._anchor, skip_special_tokens=False)
            both = self.tokenizer.decode(self._anchor + [token_id], skip_special_tokens=False)
            text = both[len(self._anchor_text):] if both.startswith(self._anchor_text) else \
                self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._texts[token_id] = text
        return text


def usage(shapes: list["Shape"], finishes: list[Finish]) -> dict:
    """Usage of a request: one shape and its finish per choice, in index order."""
    firsts = [(shape, finish) for shape, finish in zip(shapes, finishes, strict=True) if shape.counts_prompt]
    prompt_tokens = sum(shape.num_prompt_tokens for shape, _ in firsts)
    completion_tokens = sum(f.num_completion_tokens for s, f in zip(shapes, finishes) if not s.scores_only)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": sum(f.done.num_cached_tokens for _, f in firsts)}}


class Shape(ABC):
    """How one endpoint writes a request's pieces; one instance per request."""

    object_name = ""
    chunk_object_name = ""
    scores_only = False  # the choice shows no generated token (completions: echo with max_tokens 0)
    # the prompt's ids (return_token_ids) and logprobs (prompt_logprobs) in the response (chat), or in each choice
    prompt_ids_at_top = True

    def __init__(self, request_id: str, model: str, texts: TokenTexts, num_prompt_tokens: int, logprobs: bool,
                 index: int = 0, counts_prompt: bool = True, prompt_token_ids: list[int] | None = None,
                 ids_as_tokens: bool = False, scored_prompt: list[int] | None = None):
        """`counts_prompt`: usage counts this choice's prompt (its prompt's first choice); `prompt_token_ids`:
        vLLM's `return_token_ids` (the prompt's and the output's token ids go with the text), else None;
        `ids_as_tokens`: vLLM's `return_tokens_as_token_ids` (logprobs name tokens "token_id:N", not by text);
        `scored_prompt`: the prompt's ids when vLLM's `prompt_logprobs` asks for their logprobs, else None."""
        self.id, self.model, self.texts, self.index, self.counts_prompt = request_id, model, texts, index, counts_prompt
        self.num_prompt_tokens, self.logprobs = num_prompt_tokens, logprobs
        self.prompt_token_ids, self.ids_as_tokens, self.scored_prompt = prompt_token_ids, ids_as_tokens, scored_prompt
        self.created = int(time.time())
        self._num_chars = 0  # completions' text_offset
        self._unsent_ids: list[int] = []  # return_token_ids: generated ids not yet in a chunk
        self._ids_started = False  # return_token_ids: the prompt's ids went out (on the first chunk)

    def _envelope(self, object_name: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def chunk(self, piece: Piece, usage_field: bool) -> dict | None:
        """The stream chunk of a piece; None when it shows nothing."""
        self._unsent_ids += self.generated_ids(piece)
        piece = self._shown(piece)
        if piece is None:
            return None
        choice = self._delta_choice(piece)
        choice["logprobs"] = self._logprobs(piece.token_ids, piece.logprobs) if self.logprobs else None
        extra = {"usage": None} if usage_field else {}
        return self._with_ids(self._envelope(self.chunk_object_name, [choice], **extra))

    def final_chunk(self, finish: Finish, usage_field: bool) -> dict:
        choice = self._delta_choice(Piece([], ""), final=True)
        choice.update(logprobs=None, finish_reason=self._reason(finish))
        extra = {"usage": None} if usage_field else {}
        return self._with_ids(self._envelope(self.chunk_object_name, [choice], **extra))

    def _with_ids(self, chunk: dict) -> dict:
        """return_token_ids, streamed: each chunk the ids generated since the last, the first the prompt's too."""
        if self.prompt_token_ids is not None:
            chunk["choices"][0]["token_ids"], self._unsent_ids = self._unsent_ids, []
            if not self._ids_started:
                self._ids_started = True
                self._add_prompt_ids(chunk)
        return chunk

    def _token(self, token_id: int) -> str:
        """A token as logprobs name it."""
        return f"token_id:{token_id}" if self.ids_as_tokens else self.texts(token_id)

    def generated_ids(self, piece: Piece) -> list[int]:
        """The generated token ids a piece carries, as return_token_ids reports them."""
        return piece.token_ids

    def _add_prompt_ids(self, chunk: dict) -> None:
        (chunk if self.prompt_ids_at_top else chunk["choices"][0])["prompt_token_ids"] = self.prompt_token_ids

    def usage_chunk(self, usage_field: dict) -> dict:
        return self._envelope(self.chunk_object_name, [], usage=usage_field)

    def response(self, pieces: list[Piece], finish: Finish) -> dict:
        return whole_response([self], [(pieces, finish)])

    def whole_choice(self, pieces: list[Piece], finish: Finish) -> dict:
        generated = [t for p in pieces for t in self.generated_ids(p)]
        pieces = [shown for shown in map(self._shown, pieces or [Piece([], "")]) if shown is not None]
        token_ids = [t for p in pieces for t in p.token_ids]
        entries = [e for p in pieces for e in p.logprobs]
        choice = self._whole_choice("".join(p.text for p in pieces))
        choice.update(logprobs=self._logprobs(token_ids, entries) if self.logprobs else None,
                      finish_reason=self._reason(finish))
        if self.prompt_token_ids is not None:
            choice["token_ids"] = generated
        if self.scored_prompt is not None and not self.prompt_ids_at_top:
            choice["prompt_logprobs"] = self.prompt_logprobs(pieces)
        return choice

    def prompt_logprobs(self, pieces: list[Piece]) -> list[dict | None]:
        """vLLM's prompt_logprobs: for each prompt token after the first, {token id: {logprob, rank, decoded_token}}
        of the token itself and of the top k there (the first token's entry is None)."""
        entries = next((p.prompt_logprobs for p in pieces if p.prompt_logprobs is not None), None)
        if entries is None:
            return [None] * len(self.scored_prompt)
        out: list[dict | None] = [None]
        for token_id, entry in zip(self.scored_prompt[1:], entries[1:]):
            logprob, top = entry[:2]
            rank = entry[2] if len(entry) > 2 else None  # a node of an older version sends no rank
            scored = {token_id: (logprob, rank), **{t: (v, r) for r, (t, v) in enumerate(top, 1) if t != token_id}}
            out.append({str(t): {"logprob": v, "rank": r, "decoded_token": self._token(t)}
                        for t, (v, r) in scored.items()})
        return out

    def _shown(self, piece: Piece) -> Piece | None:
        """What the client sees of a piece (None: nothing)."""
        return piece

    def _reason(self, finish: Finish) -> str:
        return finish.reason

    @abstractmethod
    def _delta_choice(self, piece: Piece, final: bool = False) -> dict:
        """The choice of one stream chunk (without logprobs)."""

    @abstractmethod
    def _whole_choice(self, text: str) -> dict:
        """The choice of a whole response (without logprobs and finish reason)."""

    @abstractmethod
    def _logprobs(self, token_ids: list[int], entries: list) -> dict:
        """The choice's `logprobs` for these tokens; called in order, once per chunk."""


@dataclass(frozen=True)
class Echo:
    """A completions request's `echo`: its prompt goes in front of each choice's text and logprobs."""

    text: str
    token_ids: list[int]
    scores_only: bool = False  # max_tokens 0: the prompt alone; the one token generated is dropped


class CompletionShape(Shape):
    object_name = chunk_object_name = "text_completion"
    prompt_ids_at_top = False

    def __init__(self, *args, echo: Echo | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.echo, self.scores_only = echo, echo is not None and echo.scores_only

    def _shown(self, piece: Piece) -> Piece | None:
        """The first piece gets the echoed prompt in front (its logprobs come with it: one entry per prompt
        token, the first None); with `scores_only` the generated tokens are left out."""
        echo, self.echo = self.echo, None
        shown = Piece([], "") if self.scores_only else piece
        if echo is not None:
            entries = piece.prompt_logprobs or [None] * len(echo.token_ids)
            shown = replace(shown, token_ids=echo.token_ids + shown.token_ids, text=echo.text + shown.text,
                            logprobs=entries + shown.logprobs)
        return shown if shown.token_ids or shown.text else None

    def _reason(self, finish: Finish) -> str:
        return "length" if self.scores_only else finish.reason

    def generated_ids(self, piece: Piece) -> list[int]:
        return [] if self.scores_only else piece.token_ids  # echo only: the token generated is dropped

    def _delta_choice(self, piece: Piece, final: bool = False) -> dict:
        return {"index": self.index, "text": piece.text, "logprobs": None, "finish_reason": None}

    def _whole_choice(self, text: str) -> dict:
        choice = {"index": self.index, "text": text}
        if self.prompt_token_ids is not None:
            choice["prompt_token_ids"] = self.prompt_token_ids
        return choice

    def _logprobs(self, token_ids: list[int], entries: list) -> dict:
        tokens = [self._token(t) for t in token_ids]
        offsets = []
        for token in tokens:
            offsets.append(self._num_chars)
            self._num_chars += len(token)
        return {"tokens": tokens, "token_logprobs": [None if e is None else e[0] for e in entries],
                "top_logprobs": [None if e is None else self._top(e[1]) for e in entries], "text_offset": offsets}

    def _top(self, top: list[tuple[int, float]]) -> dict[str, float]:
        """{text: logprob}, most likely first; of two tokens with one text the likelier stays."""
        out = {}
        for token_id, logprob in top:
            out.setdefault(self._token(token_id), logprob)
        return out


class ChatShape(Shape):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    _role_sent = False

    def __init__(self, *args, tool_mode=None, **kwargs):
        """`tool_mode` (tools.chosen()): the answer is tool calls, sent whole once they are complete;
        "auto": it may be text instead, streamed as soon as it can no longer be the start of calls."""
        super().__init__(*args, **kwargs)
        self.tool_mode, self._answer, self._calls = tool_mode, [], None
        self._held: list[Piece] = []  # "auto": pieces whose text may still begin tools.CALL_MARKER
        self._text = tool_mode is None  # the answer is text: shown as it comes

    def _shown(self, piece: Piece) -> Piece | None:
        if self._text:
            return piece
        self._answer.append(piece.text)
        if self.tool_mode != "auto":
            return None
        self._held.append(piece)
        answer = "".join(self._answer)
        if answer.startswith(tools.CALL_MARKER) or tools.CALL_MARKER.startswith(answer):
            return None
        held, self._held, self._answer, self._text = self._held, [], [], True
        return Piece([t for p in held for t in p.token_ids], answer, [e for p in held for e in p.logprobs],
                     held[0].prompt_logprobs)

    def _tool_calls(self) -> list[dict] | None:
        """The calls of the whole answer; None if it is not complete (cut by max_tokens or a stop string)."""
        if self._calls is None and self.tool_mode is not None:
            try:
                self._calls = tools.tool_calls("".join(self._answer), self.tool_mode)
            except ValueError:
                self._calls = []
        return self._calls or None

    def _reason(self, finish: Finish) -> str:
        return "tool_calls" if self._tool_calls() else finish.reason

    def _delta_choice(self, piece: Piece, final: bool = False) -> dict:
        delta = {} if final else {"content": piece.text}
        if final and self._tool_calls():
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(self._tool_calls())]
        elif final and self._answer:  # an incomplete answer (or "auto" text too short to tell) goes out as text
            delta["content"] = "".join(self._answer)
        if not self._role_sent:  # on the first chunk: a chunk of its own would look like a token to TTFT meters
            delta, self._role_sent = {"role": "assistant", **delta}, True
        return {"index": self.index, "delta": delta, "logprobs": None, "finish_reason": None}

    def _whole_choice(self, text: str) -> dict:
        calls = self._tool_calls()
        if calls:
            return {"index": self.index, "message": {"role": "assistant", "content": None, "tool_calls": calls}}
        return {"index": self.index, "message": {"role": "assistant", "content": text or "".join(self._answer)}}

    def _entry(self, token_id: int, logprob: float) -> dict:
        token = self._token(token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def _logprobs(self, token_ids: list[int], entries: list) -> dict:
        return {"content": [{**self._entry(t, lp), "top_logprobs": [self._entry(i, v) for i, v in top]}
                            for t, (lp, top) in zip(token_ids, entries)]}


def whole_response(shapes: list[Shape], results: list[tuple[list[Piece], Finish]]) -> dict:
    """The response of a request for len(shapes) choices (one shape and one result per choice)."""
    choices = [shape.whole_choice(pieces, finish) for shape, (pieces, finish) in zip(shapes, results)]
    body = shapes[0]._envelope(shapes[0].object_name, choices, usage=usage(shapes, [finish for _, finish in results]))
    if shapes[0].prompt_ids_at_top and shapes[0].prompt_token_ids is not None:
        body["prompt_token_ids"] = shapes[0].prompt_token_ids
    if shapes[0].prompt_ids_at_top and shapes[0].scored_prompt is not None:
        body["prompt_logprobs"] = shapes[0].prompt_logprobs(results[0][0])
    return body
