"""TextStream: token ids in, text deltas out, with stop strings.

Text that could still be the start of a stop string is held back until it can't be (or the
stream ends); a stop string ends the text just before it (or just after it: vLLM's
`include_stop_str_in_output`). Special tokens show as text only when `skip_special_tokens` is
off (vLLM's option; the default drops them, as transformers' decode does).
"""

from __future__ import annotations

from splitserve.engine.tokenizer import IncrementalDetokenizer, Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = (),
                 include_stop: bool = False, skip_special_tokens: bool = True):
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
        self.stop, self.include_stop = stop, include_stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self.num_sent_chars = 0
        self.stopped = False
        self.stop_string: str | None = None  # the stop string that ended the text

    @classmethod
    def for_params(cls, tokenizer: Tokenizer, prompt_ids: list[int], params) -> "TextStream":
        """The text of a request with these SamplingParams (its stop strings and text options)."""
        return cls(tokenizer, prompt_ids, params.stop, params.include_stop_str_in_output, params.skip_special_tokens)

    def add(self, token_ids: list[int]) -> str:
        """Appends tokens; returns the text now safe to show. Sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        before = len(self.text)
        self.text += self.detok.add(token_ids)
        for stop in self.stop:
            at = self.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                end = at + len(stop) if self.include_stop else at
                self.text, self.stopped, self.stop_string = self.text[:end], True, stop
        return self._release(len(self.text) if self.stopped else len(self.text) - self.holdback)

    def finish(self) -> str:
        """The rest of the text at the end of the stream."""
        if not self.stopped:
            self.text += self.detok.flush()
        return self._release(len(self.text))

    def mark_sent(self) -> None:
        self.num_sent_chars = len(self.text)

    def _release(self, upto: int) -> str:
        upto = max(self.num_sent_chars, upto)
        delta = self.text[self.num_sent_chars:upto]
        self.num_sent_chars = upto
        return delta
