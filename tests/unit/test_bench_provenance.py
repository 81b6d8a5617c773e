"""Results name models by folder name + content hash and carry no machine paths."""

import json
from pathlib import Path

from splitserve.bench.provenance import REPO_ROOT, content_hash, model_id, portable, portable_args

RESULTS = REPO_ROOT / "benchmarks" / "results"


def _strings(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)
    elif isinstance(value, str):
        yield key, value


def test_committed_results_carry_no_absolute_paths():
    files = sorted(RESULTS.glob("*.json"))
    assert len(files) >= 5
    for path in files:
        for key, text in _strings(json.loads(path.read_text())):
            assert not text.startswith("/") or key == "endpoint", f"{path.name}: {key} = {text!r}"
            assert str(REPO_ROOT) not in text, f"{path.name}: {key} = {text!r}"


def _folder(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_model_id_is_name_plus_content_hash(tmp_path):
    a = _folder(tmp_path / "x" / "small", b"\x00" * 100)
    b = _folder(tmp_path / "y" / "small", b"\x00" * 100)
    c = _folder(tmp_path / "z" / "small", b"\x00" * 99 + b"\x01")
    assert model_id(a) == model_id(b) == f"small sha256:{content_hash(a)}" and len(content_hash(a)) == 16
    assert model_id(c) != model_id(a)
    (b / "model.safetensors").write_bytes(b"\x02" * 100)  # a changed file is hashed again
    assert model_id(b) != model_id(a)
    assert model_id("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 100)
    assert model_id(gguf) == f"m.gguf sha256:{content_hash(gguf)}" != model_id(a)
    assert portable(str(gguf)) == model_id(gguf)


def test_portable_values(tmp_path):
    model = _folder(tmp_path / "tiny", b"w")
    args = {"model": model, "out": str(RESULTS / "x.json"), "elsewhere": str(tmp_path / "a.json"),
            "endpoint": "/v1/completions", "tokens": [1, 2], "relative": "models/small", "n": 3}
    assert portable_args(args) == {"model": model_id(model), "out": "benchmarks/results/x.json", "elsewhere": "a.json",
                                   "endpoint": "/v1/completions", "tokens": [1, 2], "relative": "models/small", "n": 3}
    assert portable(Path("rel")) == "rel"
