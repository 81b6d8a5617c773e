"""The Llama family (Llama 2/3, Mistral, Qwen2) as a plain nn.Module over a paged KV cache.

q/k/v and gate/up projections are fused into one Linear each when weights load; RoPE turns q
and k in one call, on the fused projection's output. Inside the model, submodules are called
through `.forward`: a batch-1 decode step makes ~300 module calls, and nn.Module's `__call__`
(hooks, tracing checks) cost several percent of the step; no hooks are used in this model.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from splitserve.engine import native
from splitserve.engine.attention import AttentionBatch, PagedKVCache, paged_attention
from splitserve.engine.config import ModelConfig
from splitserve.engine.lora import LoraBatch
from splitserve.engine.rope import RotaryTable, apply_rotary_signed


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _native_rows(x):
            return native.layer_ops().rms_norm(x.reshape(-1, x.shape[-1]), self.weight, self.eps).view(x.shape)
        if x.dtype == torch.float32:  # one fused op; HF's formula in fp32
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + residual, the norm of it), in one pass where the native kernels run."""
        if _native_rows(x) and residual.is_contiguous():
            width = x.shape[-1]
            total, normed = native.layer_ops().add_rms_norm(x.reshape(-1, width), residual.reshape(-1, width),
                                                           self.weight, self.eps)
            return total.view(x.shape), normed.view(x.shape)
        total = x + residual
        return total, self.forward(total)


def _native_rows(x: torch.Tensor, multiple: int = 8) -> bool:
    """Whether native.py's layer ops take x: contiguous fp32 CPU rows, `multiple` divides their width,
    kernels built."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous() and x.shape[-1] % multiple == 0
            and native.layer_ops() is not None)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = cfg.head_dim ** -0.5

    def forward(self, x, cos, sin_signed, cache: PagedKVCache, layer: int, batch: AttentionBatch,
                lora: LoraBatch | None = None):
        qkv = self.qkv_proj.forward(x)  # [T, q_size + 2 * kv_size]
        if lora is not None:
            lora.add(qkv, x, layer, "qkv_proj")
        qk_size = self.q_size + self.kv_size
        qk = self._rotated(qkv, qk_size, cos, sin_signed)  # [T, H + KVH, D]
        q, k = qk[:, :self.num_heads], qk[:, self.num_heads:]
        v = qkv[:, qk_size:].unflatten(-1, (self.num_kv_heads, self.head_dim))  # [T, KVH, D]
        out = paged_attention(q, k, v, cache, layer, batch, self.scale).reshape(-1, self.q_size)
        projected = self.o_proj.forward(out)
        return projected if lora is None else lora.add(projected, out, layer, "o_proj")

    def _rotated(self, qkv: torch.Tensor, qk_size: int, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        if self.head_dim % 16 == 0 and _native_rows(qkv) and cos.is_contiguous() and sin_signed.is_contiguous():
            return native.layer_ops().rope(qkv, qk_size // self.head_dim, self.head_dim, cos, sin_signed)
        return apply_rotary_signed(qkv[:, :qk_size].unflatten(-1, (-1, self.head_dim)), cos, sin_signed)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x, layer: int = 0, lora: LoraBatch | None = None):
        gate_up = self.gate_up_proj.forward(x)
        if lora is not None:
            lora.add(gate_up, x, layer, "gate_up_proj")
        if _native_rows(gate_up, 16):
            hidden = native.layer_ops().silu_mul(gate_up)
        else:
            gate, up = gate_up.chunk(2, dim=-1)  # views of one fresh tensor: safe to overwrite
            hidden = F.silu(gate, inplace=True).mul_(up)
        out = self.down_proj.forward(hidden)
        return out if lora is None else lora.add(out, hidden, layer, "down_proj")


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, layer, batch, lora: LoraBatch | None = None):
        attended = self.self_attn.forward(self.input_layernorm.forward(x), cos, sin, cache, layer, batch, lora)
        x, normed = self.post_attention_layernorm.add_and_norm(attended, x)
        return x + self.mlp.forward(normed, layer, lora)


LayerHook = Callable[[int], None]


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # weights come from the checkpoint: no random init (under the meta device it would import torch._dynamo, ~2 s)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary: RotaryTable | None = None

    def init_rotary(self, max_positions: int, device) -> None:
        cfg = self.cfg
        self.rotary = RotaryTable(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling, device)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: PagedKVCache,
                batch: AttentionBatch, sample_rows: torch.Tensor, on_layer_done: LayerHook | None = None,
                lora: LoraBatch | None = None):
        """input_ids, positions: [T]; sample_rows: [S] rows whose next-token logits are wanted -> [S, vocab] fp32.
        lora: the rows that run LoRA adapters (lora.py); None: the base model alone."""
        return self.logits(self.residual_stream(input_ids, positions, cache, batch, on_layer_done, lora)[sample_rows])

    @torch.inference_mode()
    def residual_stream(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: PagedKVCache,
                        batch: AttentionBatch, on_layer_done: LayerHook | None = None,
                        lora: LoraBatch | None = None) -> torch.Tensor:
        """The last layer's output before the final norm: [T, hidden]."""
        x = self.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = self.rotary.lookup_signed(positions, x.dtype)  # once per step, shared by every layer
        for i, layer in enumerate(self.layers):
            x = layer.forward(x, cos, sin, cache, i, batch, lora)
            if on_layer_done is not None:
                on_layer_done(i)
        return x

    @torch.inference_mode()
    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Residual-stream rows [S, hidden] -> next-token logits [S, vocab] fp32."""
        return self.lm_head(self.norm(rows)).float()

    @torch.inference_mode()
    def final_hidden(self, rows: torch.Tensor) -> torch.Tensor:
        """Residual-stream rows [S, hidden] -> HF's `last_hidden_state` rows (after the final norm), fp32."""
        return self.norm(rows).float()
