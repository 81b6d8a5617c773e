"""Model shapes that `make_model` can build, by name.

`tiny` and `qwen2-tiny` are for unit tests, `small` is the CPU benchmark model, `1b` has the
shape of Llama-3.2-1B for GPU checks. Every preset has the HF config fields it needs and knows
its own parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelPreset:
    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-5
    dtype: str = "float32"
    tokenizer_vocab_size: int | None = None  # None: the tokenizer fills vocab_size

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.tokenizer_vocab > self.vocab_size:
            raise ValueError(f"tokenizer_vocab_size ({self.tokenizer_vocab}) exceeds vocab_size ({self.vocab_size})")

    @property
    def model_type(self) -> str:
        return ARCHITECTURES[self.architecture]

    @property
    def attention_bias(self) -> bool:
        """Qwen2 has biases on q, k and v (not on o)."""
        return self.architecture == "Qwen2ForCausalLM"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def tokenizer_vocab(self) -> int:
        return self.tokenizer_vocab_size or self.vocab_size

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """HF parameter names and shapes, in a fixed order."""
        hidden, q_dim = self.hidden_size, self.num_heads * self.resolved_head_dim
        kv_dim = self.num_kv_heads * self.resolved_head_dim
        shapes = [("model.embed_tokens.weight", (self.vocab_size, hidden))]
        for i in range(self.num_layers):
            shapes += _layer_shapes(f"model.layers.{i}.", hidden, q_dim, kv_dim, self.intermediate_size, self.attention_bias)
        shapes.append(("model.norm.weight", (hidden,)))
        if not self.tie_word_embeddings:
            shapes.append(("lm_head.weight", (self.vocab_size, hidden)))
        return shapes

    def num_params(self) -> int:
        total = 0
        for _, shape in self.param_shapes():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total


def _layer_shapes(prefix: str, hidden: int, q_dim: int, kv_dim: int, inter: int, bias: bool):
    attn = prefix + "self_attn."
    shapes = [
        (prefix + "input_layernorm.weight", (hidden,)),
        (attn + "q_proj.weight", (q_dim, hidden)),
        (attn + "k_proj.weight", (kv_dim, hidden)),
        (attn + "v_proj.weight", (kv_dim, hidden)),
    ]
    if bias:
        shapes += [(attn + "q_proj.bias", (q_dim,)), (attn + "k_proj.bias", (kv_dim,)), (attn + "v_proj.bias", (kv_dim,))]
    return shapes + [
        (attn + "o_proj.weight", (hidden, q_dim)),
        (prefix + "post_attention_layernorm.weight", (hidden,)),
        (prefix + "mlp.gate_proj.weight", (inter, hidden)),
        (prefix + "mlp.up_proj.weight", (inter, hidden)),
        (prefix + "mlp.down_proj.weight", (hidden, inter)),
    ]


_LLAMA3_TINY_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}
_LLAMA32_ROPE = {
    "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (
    ModelPreset(
        name="tiny", architecture="LlamaForCausalLM", hidden_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, intermediate_size=128, vocab_size=1024, max_position_embeddings=2048,
        rope_scaling=_LLAMA3_TINY_ROPE,
    ),
    ModelPreset(
        name="qwen2-tiny", architecture="Qwen2ForCausalLM", hidden_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, intermediate_size=128, vocab_size=1024, max_position_embeddings=2048,
        rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
    ),
    ModelPreset(
        name="small", architecture="LlamaForCausalLM", hidden_size=512, num_layers=8, num_heads=8,
        num_kv_heads=4, head_dim=64, intermediate_size=1536, vocab_size=8192,
        max_position_embeddings=16384, tie_word_embeddings=True,
    ),
    ModelPreset(
        name="1b", architecture="LlamaForCausalLM", hidden_size=2048, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
        max_position_embeddings=131072, rope_theta=500000.0, rope_scaling=_LLAMA32_ROPE,
        tie_word_embeddings=True, dtype="bfloat16", tokenizer_vocab_size=8192,
    ),
)}


def preset_names() -> list[str]:
    """Random presets, then the packaged real models (see packaged.py)."""
    from splitserve.modelgen.packaged import PACKAGED

    return [*PRESETS, *PACKAGED]


def check_preset_name(name: str) -> None:
    if name not in preset_names():
        raise KeyError(f"unknown model preset {name!r}; available: {', '.join(preset_names())}")


def get_preset(name: str) -> ModelPreset:
    check_preset_name(name)
    if name not in PRESETS:
        raise KeyError(f"preset {name!r} is a packaged real model, not a random shape")
    return PRESETS[name]
