"""Opening a GGUF file with the `gguf` package (llama.cpp's reference reader), checked up front.

`open_gguf(path)` parses the header once per process (the reader is slow on big vocabularies:
it makes one numpy view per token string) and checks every tensor's quantization type, so a bad
file fails here with a `ModelFormatError` naming the file, before any weight is read.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from splitserve.engine.errors import ModelFormatError

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
GGUF_MAGIC = b"GGUF"


def is_gguf_path(path: str | Path) -> bool:
    """A model given as a file (rather than an HF folder) is read as GGUF."""
    return Path(path).is_file()


def model_name(path: str | Path) -> str:
    """A model's default name (the OpenAI API's model id): its folder's, or its GGUF file's without `.gguf`."""
    path = Path(path).resolve()
    return path.name.removesuffix(".gguf") if is_gguf_path(path) else path.name


class GGUFFile:
    """Metadata by key and dequantized tensors of one GGUF file."""

    def __init__(self, path: Path, reader):
        self.path = path
        self.reader = reader
        self.tensors = {t.name: t for t in reader.tensors}

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise self.error(f"metadata key {key!r} is missing")
        return value

    def error(self, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {problem}")

    def dequantized(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[rows, cols] in numpy/torch order (GGUF lists dims reversed)."""
        from gguf.quants import dequantize

        info = self.tensors[name]
        values = dequantize(info.data, info.tensor_type)
        shape = tuple(int(d) for d in reversed(info.shape.tolist()))
        return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape)).to(dtype)


def open_gguf(path: str | Path) -> GGUFFile:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read the model file ({exc.strerror})") from None
    return _open_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, size: int, mtime_ns: int) -> GGUFFile:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader fails in many ways on a cut or corrupt file
        raise ModelFormatError(f"{path}: truncated or corrupt GGUF file ({type(exc).__name__}: {exc})") from None
    gguf_file = GGUFFile(Path(path), reader)
    _check_tensors(gguf_file, size)
    return gguf_file


def _check_tensors(gguf_file: GGUFFile, size: int) -> None:
    for info in gguf_file.reader.tensors:
        if info.tensor_type.name not in SUPPORTED_TYPES:
            raise gguf_file.error(f"tensor {info.name} has quantization type {info.tensor_type.name}, "
                                  f"not supported; supported: {', '.join(SUPPORTED_TYPES)}")
        if info.data_offset + info.n_bytes > size:
            raise gguf_file.error(f"truncated: tensor {info.name} ends past the end of the file")
