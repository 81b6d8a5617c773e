"""Errors the engine raises: model files it cannot load, LoRA adapters it does not serve."""

from __future__ import annotations


class ModelFormatError(ValueError):
    """A model file or folder the engine cannot load: missing, truncated, not GGUF, or an
    architecture, quantization type or tokenizer model it does not support.

    The message is one line that names the file and the problem; entry points print it and exit
    non-zero instead of showing a traceback.
    """


class UnknownAdapter(ValueError):
    """A request names a LoRA adapter this node does not serve (now): a node answers NOT_FOUND, so that a router
    whose view of the node is a moment old (the adapter unloaded, the node restarted) sends it elsewhere."""
