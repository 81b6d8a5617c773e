"""Prompts of a requested token length, cut from real text with the served model's tokenizer.

The text is the MuSiQue passages (bench/data/cacheblend_musique_s.json), tokenized
once into one id stream; a prompt is a window of that stream, decoded, then re-encoded and
trimmed or extended until its length is right (BPE merges at the cut can shift it by a token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def load_tokenizer(model_dir: str | Path) -> TokenizerLike:
    """The served model's tokenizer (`model_dir/tokenizer.json` or a .gguf file), via the engine's Tokenizer."""
    from splitserve.engine.tokenizer import Tokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_file() and not (model_dir / "tokenizer.json").is_file():  # a file: a GGUF
        raise FileNotFoundError(f"no tokenizer.json in {model_dir} (--tokenizer takes the model folder or .gguf file)")
    return Tokenizer.from_dir(model_dir)


class TextSource:
    """A token stream of real text to cut prompts and Mooncake blocks from."""

    def __init__(self, tokenizer: TokenizerLike, texts: list[str]):
        self.tokenizer = tokenizer
        ids: list[int] = []
        for text in dict.fromkeys(texts):  # distinct passages, first-seen order
            ids.extend(tokenizer.encode(text + "\n", add_special_tokens=False))
        if len(ids) < 16:
            raise ValueError("the text source is too short to build prompts from")
        self.ids = np.asarray(ids, dtype=np.int64)

    def take(self, start: int, num_tokens: int) -> list[int]:
        """`num_tokens` ids from `start`, wrapping around the stream."""
        index = (start + np.arange(num_tokens)) % self.ids.size
        return self.ids[index].tolist()

    def prompt(self, num_tokens: int, rng: np.random.Generator) -> tuple[str, int]:
        """(text, its token count): text from a random place, re-encoding to about `num_tokens`."""
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        start = int(rng.integers(self.ids.size))
        ids = self.take(start, num_tokens)
        for step in range(4):
            text = self.tokenizer.decode(ids)
            got = self.tokenizer.encode(text, add_special_tokens=False)
            if len(got) == num_tokens:
                return text, num_tokens
            if len(got) > num_tokens:
                ids = got[:num_tokens]
            else:
                ids = got + self.take(start + num_tokens + step, num_tokens - len(got))
        return text, len(got)

    def block(self, key: int, num_tokens: int, seed: int = 0) -> str:
        """Text of block `key`: the same key (and seed) always gives the same text; a shorter
        `num_tokens` gives a prefix of the same ids."""
        start = int(np.random.default_rng([seed, key & 0xFFFFFFFFFFFFFFFF]).integers(self.ids.size))
        return self.tokenizer.decode(self.take(start, num_tokens))
