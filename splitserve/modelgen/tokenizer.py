"""A byte-level BPE tokenizer trained on the shipped corpus, and its HF side files.

Byte-level pieces, BOS added by the post-processor (so `tokenizers` and HF `AutoTokenizer`
give the same ids), ChatML chat template; the special tokens take ids 0..4, in the order of
SPECIAL_TOKENS. The split regex and normalizer follow the model type, because transformers 5
rebuilds a Qwen2 tokenizer's pipeline (NFC, one digit per piece) whatever tokenizer.json says.
"""

from __future__ import annotations

import functools

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from splitserve.modelgen.corpus import load_corpus

BOS, EOS, IM_START, IM_END, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, IM_START, IM_END, PAD)
SPECIAL_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS)}

_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}DIGITS| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# model_type -> (split regex, NFC normalizer)
STYLES = {"llama": (_SPLIT.replace("DIGITS", "{1,3}"), False), "qwen2": (_SPLIT.replace("DIGITS", ""), True)}

# The rendered prompt starts with BOS text: encode it with add_special_tokens=False, as HF
# apply_chat_template(tokenize=True) does.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(vocab_size: int, style: str = "llama") -> Tokenizer:
    """Deterministic: the same arguments give the same tokenizer.json."""
    if style not in STYLES:
        raise KeyError(f"unknown tokenizer style {style!r}; available: {', '.join(STYLES)}")
    return Tokenizer.from_str(_trained_json(vocab_size, style))


@functools.lru_cache(maxsize=4)
def _trained_json(vocab_size: int, style: str) -> str:
    split, nfc = STYLES[style]
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(load_corpus(), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"corpus too small for a vocab of {vocab_size}: got {tok.get_vocab_size()} tokens")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, SPECIAL_IDS[BOS])],
    )
    return tok.to_str()


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json for HF `AutoTokenizer`."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,  # else transformers' Qwen2Tokenizer adds an "<|endoftext|>" past the vocab
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
