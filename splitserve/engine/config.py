"""Engine and model configuration: frozen dataclasses validated on construction."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from splitserve import labels
from splitserve.engine.errors import ModelFormatError
from splitserve.engine.speculation import NgramSpeculation

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unsupported architecture {self.architecture!r}; supported: {', '.join(ARCHITECTURES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: silu")

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        """From an HF folder's config.json, or from a .gguf file's metadata."""
        hf = read_hf_config(model_dir)
        try:
            return cls.from_hf(hf)
        except ModelFormatError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"config field {exc} is missing" if isinstance(exc, KeyError) else str(exc)
            raise ModelFormatError(f"{model_dir}: {problem}") from None

    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        arch = (hf.get("architectures") or [_MODEL_TYPES.get(hf.get("model_type"), "LlamaForCausalLM")])[0]
        rope = _rope(hf)
        heads = hf["num_attention_heads"]
        qwen2 = arch == "Qwen2ForCausalLM"
        window = hf.get("sliding_window") if (not qwen2 or hf.get("use_sliding_window")) else None
        return cls(
            architecture=arch,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            rope_scaling=rope if rope.get("rope_type", "default") != "default" else None,
            attention_bias=qwen2 or bool(hf.get("attention_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=window,
            hidden_act=hf.get("hidden_act", "silu"),
        )

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.finfo(dtype).bits // 8


def read_hf_config(model: str | Path) -> dict:
    """config.json of an HF folder, or the same fields built from a GGUF file."""
    from splitserve.engine.gguf_reader import is_gguf_path, open_gguf

    if is_gguf_path(model):
        from splitserve.engine.gguf_model import hf_config

        return hf_config(open_gguf(model))
    path = Path(model) / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"{model}: no config.json (a model is an HF folder or a .gguf file)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc})") from None


_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _rope(hf: dict) -> dict:
    """RoPE settings from either layout: transformers 5 `rope_parameters`, or 4.x `rope_theta` + `rope_scaling`."""
    rope = dict(hf.get("rope_parameters") or {})
    rope.update(hf.get("rope_scaling") or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    return rope


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs a model. Sizes are in tokens unless named otherwise."""

    dtype: str = "float32"
    device: str = "cpu"
    # the KV cache's dtype (vLLM's --kv-cache-dtype): auto is the model's; float16 / bfloat16 halve an fp32 model's
    # KV (twice the tokens in kv_cache_bytes, half the bytes to transfer and to read a decode step)
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    num_blocks: int = 0  # 0: derived from kv_cache_bytes
    kv_cache_bytes: int = 256 << 20
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    # embeddings (pooling.py) take at most this many of a step's tokens: short steps, so a generating request
    # arriving behind them waits little (they yield to it, but not in the middle of a step)
    max_embedding_tokens_per_step: int = 256
    enable_prefix_caching: bool = True
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    seed: int = 0
    packed_cpu_linear: bool = True  # oneDNN pre-packed weights for fp32 on CPU (see cpu_linear.py)
    quant_cpu_linear: bool = True  # with it, native kernels over weights that are exactly Q4_1/Q8_0 blocks
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, PEFT folder or GGUF file): LoRA adapters requests may name
    speculative: NgramSpeculation | None = None  # n-gram speculative decoding (speculation.py); None: off
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.kv_cache_dtype not in labels.KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be auto or one of {', '.join(DTYPES)}, got {self.kv_cache_dtype!r}"
                             + (" (fp8 KV caches are not supported)" if "fp8" in str(self.kv_cache_dtype) else ""))
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_embedding_tokens_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks < 0 or self.kv_cache_bytes < 0 or self.max_model_len < 0:
            raise ValueError("num_blocks, kv_cache_bytes and max_model_len must be >= 0")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def kv_dtype(self) -> str:
        """The KV cache's dtype by name: kv_cache_dtype, the model's for auto."""
        return self.dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype

    @property
    def kv_torch_dtype(self) -> torch.dtype:
        return DTYPES[self.kv_dtype]
