"""A GGUF file's tokenizer half: byte-level BPE or SentencePiece BPE from `tokenizer.ggml.*`, special
tokens, chat template.

Byte-level BPE (`gpt2`) is built as transformers builds it from a GGUF (its `byte_level_tokenizer`):
the vocabulary and merges as stored, control tokens (type 3) added whole as special tokens,
user-defined ones (type 4) added whole as plain tokens, BOS prepended when `add_bos_token` says so,
and the text split by the regex named in `tokenizer.ggml.pre`. Llama 3's vocabularies (tiktoken's)
take a piece that is a token whole, before any merge (`ignore_merges`, as its tokenizer.json and
llama.cpp do: "Cửa Việt" is 3 tokens, not 5). One deliberate difference: "smollm" splits digits one
by one, as llama.cpp and SmolLM2's own tokenizer.json do (transformers falls back to GPT-2's split
there and keeps runs of digits together). SentencePiece BPE (`llama`): see `_sentencepiece`.
benchmarks/gguf_vocab_check.py checks both against llama.cpp's own tokenizer tests.
"""

from __future__ import annotations

import functools

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from splitserve.engine.gguf_reader import GGUFFile

SUPPORTED_MODELS = ("gpt2", "llama")  # byte-level BPE; SentencePiece BPE (Llama 2, Mistral, TinyLlama)
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp's token types (6: byte, <0xXX>)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3, "dbrx": _LLAMA3,
          "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2}
DIGIT_SPLITS = ("smollm", "starcoder", "refact", "codeshell")
WHOLE_PIECES = ("llama3", "llama-v3", "llama-bpe")  # llama.cpp's ignore_merges among the splits above


def build_tokenizer(gguf: GGUFFile) -> Tokenizer:
    model = gguf.get("tokenizer.ggml.model")
    if model not in SUPPORTED_MODELS:
        raise gguf.error(f"tokenizer model {model!r} is not supported; supported: gpt2 (byte-level BPE), "
                         "llama (SentencePiece BPE)")
    tokens, types = _tokens(gguf), gguf.get("tokenizer.ggml.token_type") or []
    tok = _byte_level(gguf, tokens) if model == "gpt2" else _sentencepiece(gguf, tokens, types)
    whole = _byte_alphabet() if model == "gpt2" else None  # byte-level: control tokens spelled in its alphabet
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
                            if kind == CONTROL and (whole is None or set(t) <= whole)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    bos = gguf.get("tokenizer.ggml.bos_token_id")
    if gguf.get("tokenizer.ggml.add_bos_token", model == "llama") and bos is not None:
        text = tokens[int(bos)]
        tok.post_processor = processors.TemplateProcessing(single=f"{text} $A", pair=f"{text} $A {text}:1 $B:1",
                                                           special_tokens=[(text, int(bos))])
    return tok


def _byte_level(gguf: GGUFFile, tokens: list[str]) -> Tokenizer:
    pre = gguf.get("tokenizer.ggml.pre")
    tok = Tokenizer(models.BPE(vocab=_vocab(tokens), merges=_merges(gguf), fuse_unk=False,
                               ignore_merges=pre in WHOLE_PIECES))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(gguf: GGUFFile, tokens: list[str], types: list[int]) -> Tokenizer:
    """SentencePiece BPE as llama.cpp runs it: spaces become "▁" (one in front of the text when
    add_space_prefix), adjacent pieces merge best score first, and characters outside the vocabulary
    fall back to their <0xXX> byte tokens. As a `tokenizers` BPE (transformers' LlamaConverter):
    merges are every split of a piece into two pieces, ranked by the joined piece's score."""
    scores = gguf.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise gguf.error("SentencePiece vocabulary without one tokenizer.ggml.scores entry per token")
    unk = tokens[int(gguf.get("tokenizer.ggml.unknown_token_id", 0))]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=_spm_merges(tokens, scores, types),
                               unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = bool(gguf.get("tokenizer.ggml.add_space_prefix", True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁")] * prefix + [normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + [decoders.Strip(" ", 1, 0)] * prefix)
    return tok


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    pieces = {t: i for i, t in enumerate(tokens) if not types or types[i] in (NORMAL, USER_DEFINED)}
    found = [(scores[i], left, piece[len(left):]) for piece, i in pieces.items()
             for left in (piece[:k] for k in range(1, len(piece))) if left in pieces and piece[len(left):] in pieces]
    found.sort(key=lambda m: (-m[0], pieces[m[1]], pieces[m[2]]))
    return [(left, right) for _, left, right in found]


def tokenizer_config(gguf: GGUFFile) -> dict:
    """tokenizer_config.json: special token texts and the chat template (BOS is tokenizer.json's post-processor)."""
    tokens = _tokens(gguf)
    text = lambda key: tokens[int(gguf.get(key))] if gguf.get(key) is not None else None  # noqa: E731
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text("tokenizer.ggml.bos_token_id"), "eos_token": text("tokenizer.ggml.eos_token_id"),
        "pad_token": text("tokenizer.ggml.padding_token_id"), "unk_token": text("tokenizer.ggml.unknown_token_id"),
        "clean_up_tokenization_spaces": False,
        "chat_template": gguf.get("tokenizer.chat_template"),
    }


def eos_token_ids(gguf: GGUFFile) -> list[int]:
    """What ends generation in llama.cpp: EOS, and the end-of-turn / end-of-message tokens."""
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    ids = [int(gguf.get(k)) for k in keys if gguf.get(k) is not None]
    return list(dict.fromkeys(ids))


def _tokens(gguf: GGUFFile) -> list[str]:
    tokens = gguf.get("tokenizer.ggml.tokens")
    if not tokens:
        raise gguf.error("no tokenizer.ggml.tokens: the file carries no vocabulary")
    return tokens


def _vocab(tokens: list[str]) -> dict[str, int]:
    """Tokens outside the byte alphabet are respelled in it (as transformers does)."""
    spelling, alphabet = _byte_spelling(), _byte_alphabet()
    return {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode())): i for i, t in enumerate(tokens)}


def _merges(gguf: GGUFFile) -> list[tuple[str, str]]:
    merges = gguf.get("tokenizer.ggml.merges")
    if merges is None:
        raise gguf.error("byte-level BPE without tokenizer.ggml.merges")
    return [tuple(m.split(" ", 1)) for m in merges]


def _pre_tokenizer(pre: str | None):
    if pre in SPLITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGIT_SPLITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


@functools.cache
def _byte_spelling() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


@functools.cache
def _byte_alphabet() -> frozenset[str]:
    return frozenset(_byte_spelling().values())
