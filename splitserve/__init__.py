"""splitserve: a disaggregated (prefill/decode) LLM inference cluster."""

__version__ = "0.1.0"
