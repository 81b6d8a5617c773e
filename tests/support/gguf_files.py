"""GGUF files written from HF folders with `gguf`'s own writer and quantizer, as llama.cpp's
converter lays them out (Llama q/k rows permuted, norms kept F32, names blk.N.*).

No rope_freqs tensor is written: transformers' GGUF loading ignores it, and the tests compare
against transformers. `mutate` hooks let error tests write deliberately broken files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from splitserve.engine.gguf_model import permute_rows

QUANT_TYPES = ("F32", "F16", "Q8_0")
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
PRE_TOKENIZERS = {"llama": "llama-bpe", "qwen2": "qwen2"}


def write_gguf(model_dir: Path, out: Path, quant: str = "F32", arch: str | None = None,
               tokenizer_model: str = "gpt2", extra_tensors: dict | None = None, sentencepiece: bytes | None = None) -> Path:
    """`sentencepiece`: a SentencePiece model (its serialized proto) written as the vocabulary instead of the
    folder's own, as llama.cpp's converter writes a Llama 2 / Mistral one."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text())
    arch = arch or config["model_type"]
    writer = gguf.GGUFWriter(str(out), arch)
    _write_config(writer, config)
    _write_sampling(writer, model_dir)
    if sentencepiece is None:
        _write_tokenizer(writer, model_dir, config["model_type"], tokenizer_model)
    else:
        _write_sentencepiece(writer, sentencepiece, json.loads((model_dir / "tokenizer_config.json").read_text()))
    for name, tensor in _gguf_tensors(model_dir, config):
        _add_tensor(writer, name, tensor, quant)
    for name, (array, qtype) in (extra_tensors or {}).items():
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _write_sampling(writer, model_dir: Path) -> None:
    """general.sampling.* from generation_config.json, as llama.cpp's converter writes them."""
    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    adders = {"temperature": writer.add_sampling_temp, "top_p": writer.add_sampling_top_p,
              "top_k": writer.add_sampling_top_k, "min_p": writer.add_sampling_min_p,
              "repetition_penalty": writer.add_sampling_penalty_repeat}
    for name, add in adders.items():
        if config.get(name) is not None:
            add(config[name])


def _write_config(writer, config: dict) -> None:
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])


def _write_tokenizer(writer, model_dir: Path, model_type: str, tokenizer_model: str) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    specials = {t["id"]: t["content"] for t in tok["added_tokens"] if t["special"]}
    by_id.update(specials)
    tokens = [by_id[i] for i in range(len(by_id))]
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(PRE_TOKENIZERS[model_type])
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_bos_token_id(ids[tok_config["bos_token"]])
    writer.add_eos_token_id(ids[tok_config["eos_token"]])
    writer.add_pad_token_id(ids[tok_config["pad_token"]])
    writer.add_add_bos_token(tok.get("post_processor") is not None)
    writer.add_chat_template(tok_config["chat_template"])


def train_sentencepiece(vocab_size: int, control_symbols: tuple[str, ...] = ()) -> bytes:
    """A SentencePiece BPE model trained on the shipped corpus with Llama 2's settings (byte fallback, no
    normalization, spaces kept, a space in front): its serialized proto."""
    import io

    import sentencepiece

    from splitserve.modelgen.corpus import load_corpus

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(load_corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, split_digits=True, character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, control_symbols=list(control_symbols), minloglevel=2)
    return model.getvalue()


def _write_sentencepiece(writer, proto: bytes, tok_config: dict) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    ids = range(sp.get_piece_size())
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in ids]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([sp.id_to_piece(i) for i in ids])
    writer.add_token_scores([sp.get_score(i) for i in ids])
    writer.add_token_types(kinds)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    writer.add_chat_template(tok_config["chat_template"])


def _gguf_tensors(model_dir: Path, config: dict):
    tensors = load_file(str(model_dir / "model.safetensors"))
    for hf_name, tensor in tensors.items():
        name = _GLOBAL_NAMES.get(hf_name) or _layer_name(hf_name)
        if config["model_type"] == "llama" and (".attn_q." in name or ".attn_k." in name):
            heads = config["num_attention_heads"] if ".attn_q." in name else config["num_key_value_heads"]
            tensor = permute_rows(tensor, heads)
        yield name, tensor.float()


def _layer_name(hf_name: str) -> str:
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER_NAMES[module]}.{kind}"


def _add_tensor(writer, name: str, tensor: torch.Tensor, quant: str) -> None:
    import gguf

    data = tensor.numpy()
    if quant == "F32" or data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif quant == "F16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType[quant]
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
