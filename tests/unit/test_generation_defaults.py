"""The model's recommended sampling defaults (generation_config.json, GGUF general.sampling.*) and how the
OpenAI API fills a request with them: what the request leaves out, and nothing else."""

import json
import shutil

import pytest

from router.front.intake import Frontend
from router.front.openai_models import ChatCompletionRequest, CompletionRequest
from splitserve.engine.generation_defaults import sampling_defaults
from splitserve.engine.gguf_convert import convert_gguf
from tests.support.gguf_files import write_gguf

RECOMMENDED = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05}


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    """The tiny model with a generation_config.json like Qwen's (do_sample is not read, as vLLM does not)."""
    folder = shutil.copytree(tiny_model, tmp_path / "tiny-recommended")
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **RECOMMENDED, "do_sample": True}))
    return folder


def test_read_from_a_folder_and_from_a_gguf_file_and_kept_by_convert(model_dir, tmp_path):
    assert sampling_defaults(model_dir) == RECOMMENDED
    gguf = write_gguf(model_dir, tmp_path / "tiny.gguf")
    assert sampling_defaults(gguf) == pytest.approx(RECOMMENDED)  # float32 in the file
    assert sampling_defaults(convert_gguf(gguf, tmp_path / "converted")) == pytest.approx(RECOMMENDED)


def test_a_model_without_them_and_generation_config_none(tiny_model, model_dir):
    assert sampling_defaults(tiny_model) == {}
    assert Frontend.from_model_dir(model_dir, "none").sampling_defaults == {}
    assert Frontend.from_model_dir(model_dir, "auto").sampling_defaults == RECOMMENDED


@pytest.mark.parametrize("bad, message", [({"temperature": -1}, "temperature must be"), ({"top_p": "high"}, "number"),
                                          ({"top_k": True}, "number")])
def test_a_bad_value_is_an_error_naming_the_file(model_dir, bad, message):
    (model_dir / "generation_config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=message) as err:
        sampling_defaults(model_dir)
    assert "generation_config.json" in str(err.value)


def test_a_request_takes_the_defaults_only_for_what_it_leaves_out():
    chat = ChatCompletionRequest.parse(json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                                   "temperature": 0.2, "top_k": 0}).encode())
    params = chat.sampling_params(64, RECOMMENDED)
    assert (params.temperature, params.top_k, params.top_p, params.min_p, params.repetition_penalty) == \
        (0.2, 0, 0.9, 0.05, 1.05)
    plain = CompletionRequest.parse(b'{"prompt": "hi"}').sampling_params()
    assert (plain.temperature, plain.top_k, plain.top_p, plain.min_p, plain.repetition_penalty) == (1.0, 0, 1.0, 0.0, 1.0)
    assert CompletionRequest.parse(b'{"prompt": "hi"}').sampling_params(RECOMMENDED).top_k == 20
