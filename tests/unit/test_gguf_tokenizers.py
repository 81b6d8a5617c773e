"""GGUF tokenizers beyond test_gguf_vs_hf's: Llama 3's whole pieces, and SentencePiece vocabularies.

GGUF files with a SentencePiece vocabulary (`tokenizer.ggml.model = llama`: Llama 2, Mistral, TinyLlama),
written from a SentencePiece model trained here with Llama 2's settings and the `tiny` preset's weights.

Tokens equal SentencePiece's own encoder on text, and llama.cpp's rule around special tokens (a space
in front of the text after each one); decoding and streaming give the text back; the engine's greedy
tokens and logprobs equal HF transformers' on the same file. (transformers' own GGUF tokenizer differs
from SentencePiece on runs of spaces and after special tokens: its ids are not the reference here.
benchmarks/gguf_vocab_check.py checks Llama's and Phi-3's real vocabularies against llama.cpp's tests.)
"""

import re

import pytest

from splitserve.engine import Engine, EngineConfig, ModelFormatError, SamplingParams, Tokenizer
from splitserve.engine.textstream import TextStream
from splitserve.modelgen.corpus import load_corpus
from tests.support.gguf_files import train_sentencepiece, write_gguf
from tests.support.hf_reference import assert_matches_hf, greedy_with
from tests.unit.test_gguf_vs_hf import TEXTS, hf_from_gguf

SPECIALS = ("<|im_start|>", "<|im_end|>")  # the tiny preset's chat template writes them
TRICKY = ["", " ", "  leading", "trailing  ", "\n\nx", "tab\there", "emoji 🦙 and ½", "Ελληνικά"]


@pytest.fixture(scope="module")
def spm(tiny_model, tmp_path_factory):
    import sentencepiece

    proto = train_sentencepiece(1024, SPECIALS)  # the tiny preset's vocabulary size
    path = write_gguf(tiny_model, tmp_path_factory.mktemp("spm") / "tiny-spm.gguf", "F32", sentencepiece=proto)
    return path, sentencepiece.SentencePieceProcessor(model_proto=proto)


def test_ids_equal_sentencepiece_and_decode_back(spm):
    path, sp = spm
    tok = Tokenizer.from_dir(path)
    for text in TEXTS + TRICKY + load_corpus()[:200]:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert tok.encode(text) == [sp.bos_id()] + sp.encode(text)
        assert tok.decode(sp.encode(text)) == text


def test_special_tokens_are_whole_and_the_text_after_them_starts_with_a_space(spm):
    path, sp = spm
    tok = Tokenizer.from_dir(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": TEXTS[0]}])
    pieces = [p for p in re.split("(<s>|<\\|im_start\\|>|<\\|im_end\\|>)", prompt) if p]
    want = [sp.piece_to_id(p) if p in ("<s>", *SPECIALS) else sp.encode(p) for p in pieces]  # llama.cpp's rule
    assert tok.encode_chat([{"role": "user", "content": TEXTS[0]}]) == \
        [i for w in want for i in (w if isinstance(w, list) else [w])]


def test_greedy_equals_hf_on_the_same_file(spm):
    path, _ = spm
    hf, _ = hf_from_gguf(path)
    engine = Engine(path, EngineConfig(block_size=4, num_blocks=128))
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]
    results = engine.generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True, logprobs=5))
    for prompt, result in zip(prompts, results):
        assert_matches_hf(result.token_ids, result.logprobs, *greedy_with(hf, prompt, 24))


def test_text_streamed_token_by_token_keeps_its_spaces(spm):
    path, sp = spm
    tok = Tokenizer.from_dir(path)
    for prompt in ([sp.bos_id()], tok.encode("Question: why?")):
        for text in TEXTS + TRICKY[2:]:
            stream = TextStream(tok, prompt)
            streamed = "".join(stream.add([t]) for t in sp.encode(text)) + stream.finish()
            assert streamed == (text if len(prompt) == 1 else " " + text), text  # "▁" opens a word after a prompt


def test_a_sentencepiece_vocabulary_without_scores_is_refused_by_name(tiny_model, tmp_path):
    path = write_gguf(tiny_model, tmp_path / "noscores.gguf", tokenizer_model="llama")  # byte-level tokens, no scores
    with pytest.raises(ModelFormatError, match="scores"):
        Tokenizer.from_dir(path)


def test_converted_folder_tokenizes_the_same_in_hf(spm, tmp_path):
    from transformers import AutoTokenizer

    from splitserve.engine.gguf_convert import convert_gguf

    path, sp = spm
    folder = convert_gguf(path, tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(folder)
    for text in TEXTS + TRICKY:
        assert hf(text)["input_ids"] == Tokenizer.from_dir(folder).encode(text) == [sp.bos_id()] + sp.encode(text), text
        assert hf.decode(sp.encode(text)) == text


def vocab_only_gguf(path, pre: str):
    """A byte-level vocabulary of the 256 bytes, "ab" (merged from a + b) and "abc" (no merge leads to it)."""
    import gguf

    from splitserve.engine.gguf_tokenizer import _byte_spelling

    writer = gguf.GGUFWriter(str(path), "llama")
    tokens = [_byte_spelling()[b] for b in range(256)] + ["ab", "abc"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_llama3_vocabularies_take_a_piece_that_is_a_token_whole(tmp_path):
    # llama.cpp's ignore_merges (and Llama 3's tokenizer.json): "Cửa Việt" is 3 tokens, not 5 (benchmarks/gguf_vocab_check.py)
    from splitserve.engine.gguf_reader import open_gguf
    from splitserve.engine.gguf_tokenizer import build_tokenizer

    whole = build_tokenizer(open_gguf(vocab_only_gguf(tmp_path / "llama3.gguf", "llama-bpe")))
    merged = build_tokenizer(open_gguf(vocab_only_gguf(tmp_path / "gpt2.gguf", "gpt-2")))
    assert whole.encode("abc").tokens == ["abc"]
    assert merged.encode("abc").tokens == ["ab", "c"]


def test_token_texts_keep_the_space_in_front_of_a_word(spm):
    # logprobs' tokens and /tokenize's token_strs: "▁world" alone decodes to "world", after a token to " world"
    from router.front.openai_format import TokenTexts

    path, sp = spm
    texts = TokenTexts(Tokenizer.from_dir(path))
    for text in [t for t in TEXTS + TRICKY[2:] if t.isascii()]:  # a byte token alone is no character
        assert "".join(texts(t) for t in sp.encode(text)) == " " + text, text  # the leading "▁" is a space too
    assert texts(sp.piece_to_id("<|im_start|>")) == "<|im_start|>"
