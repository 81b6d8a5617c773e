"""Errors the engine raises for model files it cannot load."""

from __future__ import annotations


class ModelFormatError(ValueError):
    """A model file or folder the engine cannot load: missing, truncated, not GGUF, or an
    architecture, quantization type or tokenizer model it does not support.

    The message is one line that names the file and the problem; entry points print it and exit
    non-zero instead of showing a traceback.
    """
