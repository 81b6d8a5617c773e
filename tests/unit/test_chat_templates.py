"""Chat rendering == transformers' `apply_chat_template(..., add_generation_prompt=True)`, text and
ids, for a dozen conversations on SmolLM2 (template from chat_template.jinja, and from the GGUF
as HF reads it) and on the random presets; templates in chat_template.json; added tokens."""

import json
import shutil

import pytest

from splitserve.engine import Tokenizer
from splitserve.engine.tokenizer import ChatFormat

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "system", "content": "Answer in German."}, {"role": "user", "content": "Wie heißt du?"},
     {"role": "assistant", "content": "Ich heiße SmolLM."}, {"role": "user", "content": "Und wo wohnst du?"}],
    [{"role": "user", "content": "東京はどこ? 🙂 café naïve"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "line one\nline two\n\n  indented\ttab"}],
    [{"role": "user", "content": "{{ not a template }} {% raw %}"}],
    [{"role": "user", "content": "fake <|im_end|> inside"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
    [{"role": "user", "content": "  leading and trailing spaces  "}],
    [{"role": "user", "content": "x" * 300}],
]


def assert_renders_like_hf(model_dir, hf_dir=None):
    from transformers import AutoTokenizer

    ours, ref = Tokenizer.from_dir(model_dir), AutoTokenizer.from_pretrained(hf_dir or model_dir)
    for conversation in CONVERSATIONS:
        text = ref.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        assert ours.apply_chat_template(conversation) == text, conversation
        ids = ref.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ours.encode_chat(conversation) == ids, conversation


@pytest.mark.parametrize("preset_fixture", ["tiny_model", "qwen2_tiny_model", "smollm2_model"])
def test_chat_rendering_equals_hf(preset_fixture, request):
    assert_renders_like_hf(request.getfixturevalue(preset_fixture))


def test_smollm2_chat_equals_hf_reading_the_gguf(smollm2_model, smollm2_hf_reference):
    assert_renders_like_hf(smollm2_model, smollm2_hf_reference)


def test_smollm2_folder_keeps_its_template_in_chat_template_jinja(smollm2_model):
    assert (smollm2_model / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((smollm2_model / "tokenizer_config.json").read_text())
    assert "You are a helpful AI assistant named SmolLM" in Tokenizer.from_dir(smollm2_model).apply_chat_template(
        CONVERSATIONS[0])


def test_template_in_chat_template_json(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "JSON:" + template}))
    # transformers' processors write this file; its tokenizers do not read it, so no HF comparison here
    assert Tokenizer.from_dir(folder).apply_chat_template(CONVERSATIONS[0]).startswith("JSON:<|begin_of_text|>")


def test_added_tokens_decoder_marks_special_tokens_as_transformers_does(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_model, tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"1024": {"content": "<tool>", "special": True, "normalized": False,
                                               "lstrip": False, "rstrip": False, "single_word": False}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = Tokenizer.from_dir(folder), AutoTokenizer.from_pretrained(folder)
    ids = ours.encode("call <tool> now")
    assert ids == ref("call <tool> now")["input_ids"] and 1024 in ids
    assert 1024 in ours.special_ids
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)


CONTINUED = [
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "The color is"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, "}],  # trailing space, trimmed by some
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "  b"}],
    [{"role": "user", "content": "Write JSON."}, {"role": "assistant", "content": '{"a": '}],
]


@pytest.mark.parametrize("preset_fixture", ["tiny_model", "qwen2_tiny_model", "smollm2_model"])
def test_continue_final_message_equals_hf(preset_fixture, request):
    """vLLM's / transformers' continue_final_message: the last message left open (no end of turn after it)."""
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue(preset_fixture)
    ours, ref = Tokenizer.from_dir(model_dir), AutoTokenizer.from_pretrained(model_dir)
    fmt = ChatFormat(add_generation_prompt=False, continue_final_message=True)
    for conversation in CONTINUED:
        text = ref.apply_chat_template(conversation, continue_final_message=True, tokenize=False)
        assert ours.apply_chat_template(conversation, chat_format=fmt) == text, conversation
        assert ours.encode_chat(conversation, chat_format=fmt) == ref.apply_chat_template(
            conversation, continue_final_message=True, tokenize=True, return_dict=False)
    assert ours.apply_chat_template(CONVERSATIONS[0], chat_format=ChatFormat(add_generation_prompt=False)) == \
        ref.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=False, tokenize=False)


THINKING = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
            "{% endif %}")


def test_template_kwargs_reach_the_template_as_in_hf(qwen2_tiny_model, tmp_path):
    """chat_template_kwargs (e.g. Qwen3's enable_thinking) are template variables, as transformers passes them."""
    from transformers import AutoTokenizer

    folder = shutil.copytree(qwen2_tiny_model, tmp_path / "m")
    (folder / "chat_template.jinja").write_text(THINKING)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = Tokenizer.from_dir(folder), AutoTokenizer.from_pretrained(folder)
    for kwargs in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
        text = ours.apply_chat_template(CONVERSATIONS[0], chat_format=ChatFormat(template_kwargs=kwargs))
        assert text == ref.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, tokenize=False, **kwargs)
        assert ("<think>" in text) == (kwargs == {"enable_thinking": False})


@pytest.mark.parametrize("kwargs, message", [
    (dict(continue_final_message=True), "cannot both be true"),
    (dict(template_kwargs={"messages": []}), "cannot set messages"),
    (dict(template_kwargs={"bos_token": "x"}), "cannot set bos_token"),
])
def test_bad_chat_formats_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChatFormat(**kwargs)


def test_continuing_a_message_the_template_drops_is_an_error(tiny_model):
    tokenizer = Tokenizer.from_dir(tiny_model)
    tokenizer.chat_template = "{% for m in messages[:-1] %}{{ m.content }}{% endfor %}"
    with pytest.raises(ValueError, match="does not render the final message"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "zzz"}],
                                      chat_format=ChatFormat(add_generation_prompt=False, continue_final_message=True))
