"""Bad model files: one-line `ModelFormatError`s naming the file and the problem, never a traceback."""

import logging

import numpy as np
import pytest

from splitserve.cli import main
from splitserve.engine import Engine, EngineConfig, ModelConfig, Tokenizer
from splitserve.engine.errors import ModelFormatError
from tests.support.gguf_files import write_gguf


@pytest.fixture(scope="module")
def good_gguf(tiny_model, tmp_path_factory):
    return write_gguf(tiny_model, tmp_path_factory.mktemp("good") / "tiny.gguf", "Q8_0")


def load_all(path):
    return Engine(path, EngineConfig(num_blocks=8))


def assert_one_line_error(path, *words):
    with pytest.raises(ModelFormatError) as info:
        load_all(path)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message
    for word in words:
        assert word in message


def test_wrong_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    assert_one_line_error(path, "not a GGUF file")


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_truncated_file(good_gguf, tmp_path, fraction):
    data = good_gguf.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_one_line_error(path, "truncated")


def test_unsupported_architecture(tiny_model, tmp_path):
    path = write_gguf(tiny_model, tmp_path / "phi2.gguf", arch="phi2")
    assert_one_line_error(path, "architecture 'phi2' is not supported", "llama")


def test_unsupported_quantization_type(tiny_model, tmp_path):
    import gguf

    odd = {"blk.0.attn_q.bias": (np.zeros((1, 18), dtype=np.uint8), gguf.GGMLQuantizationType.IQ4_NL)}
    path = write_gguf(tiny_model, tmp_path / "iq4.gguf", extra_tensors=odd)
    assert_one_line_error(path, "IQ4_NL", "not supported", "Q4_K")


def test_unsupported_tokenizer_model(tiny_model, tmp_path):
    path = write_gguf(tiny_model, tmp_path / "bert.gguf", tokenizer_model="bert")
    ModelConfig.from_dir(path)  # the model half is fine
    with pytest.raises(ModelFormatError, match="tokenizer model 'bert' is not supported"):
        Tokenizer.from_dir(path)


def test_llama3_rope_factors_are_refused_not_ignored(tiny_model, tmp_path):
    import gguf

    factors = {"rope_freqs.weight": (np.ones(8, dtype=np.float32), gguf.GGMLQuantizationType.F32)}
    path = write_gguf(tiny_model, tmp_path / "rope.gguf", extra_tensors=factors)
    assert_one_line_error(path, "rope_freqs")


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ModelFormatError, match="no config.json"):
        ModelConfig.from_dir(tmp_path / "nowhere")
    with pytest.raises(ModelFormatError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path, capsys, caplog):
    """The commands' handlers in this process: an exception (a traceback) would fail the test, and a
    warning logged (which a process would print on stderr) is refused too."""
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + bytes(7))
    for argv in (["generate", "--model", str(path), "--prompt", "hi"], ["convert", str(path), "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "bad.gguf" in stderr
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

