"""HF transformers as the reference: greedy generation with per-step log-probabilities."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=4)
def hf_model(model_dir: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()


def hf_greedy(model_dir, prompt_ids: list[int], max_new_tokens: int, dtype=torch.float32):
    """-> (token ids, logprobs [steps, vocab]) of HF greedy generation, EOS ignored."""
    return greedy_with(hf_model(str(model_dir), dtype), prompt_ids, max_new_tokens)


def greedy_with(model, prompt_ids: list[int], max_new_tokens: int):
    """hf_greedy on a model already loaded (e.g. from a GGUF file)."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )
    logprobs = torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1)
    return out.sequences[0, len(prompt_ids):].tolist(), logprobs


def assert_matches_hf(ours_ids: list[int], ours_logprobs: list, hf_ids: list[int], hf_logprobs: torch.Tensor,
                      atol: float = 1e-3) -> None:
    """Greedy tokens identical; each step's sampled and top-k logprobs within atol."""
    assert ours_ids == hf_ids, f"first difference at step {_first_diff(ours_ids, hf_ids)}"
    for step, (logprob, top, *_) in enumerate(ours_logprobs):
        ref = hf_logprobs[step]
        assert abs(logprob - ref[ours_ids[step]].item()) < atol, f"step {step}"
        ref_top = torch.topk(ref, len(top))
        assert [t for t, _ in top] == ref_top.indices.tolist() or _near_tie(ref, top, atol), f"step {step} top-k ids"
        for token, value in top:
            assert abs(value - ref[token].item()) < atol, f"step {step} token {token}"


def hf_prompt_logprobs(model, prompt_ids: list[int]) -> torch.Tensor:
    """[n - 1, vocab]: row q is HF's logprobs for prompt token q + 1, from one forward pass."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([prompt_ids])).logits[0, :-1].float(), dim=-1)


def assert_prompt_logprobs_match_hf(prompt_ids: list[int], entries: list, model, atol: float = 1e-3) -> None:
    """Our prompt logprobs (entry 0 None) against HF's forward pass: each token's logprob, its rank in the
    vocabulary where the entries carry it, and the top-k."""
    assert len(entries) == len(prompt_ids) and entries[0] is None
    reference = hf_prompt_logprobs(model, prompt_ids)
    assert_matches_hf(prompt_ids[1:], entries[1:], prompt_ids[1:], reference, atol)
    for ref, token, entry in zip(reference, prompt_ids[1:], entries[1:]):
        if len(entry) > 2:
            assert_rank(entry[2], ref, token, atol)


def assert_rank(rank: int, ref: torch.Tensor, token: int, atol: float = 1e-3) -> None:
    """`rank` is the token's place in HF's logprobs `ref` (1: the likeliest), up to ties within atol."""
    assert (ref > ref[token] + atol).sum() + 1 <= rank <= (ref > ref[token] - atol).sum() + 1


def _near_tie(ref: torch.Tensor, top: list, atol: float) -> bool:
    ref_sorted = torch.sort(ref, descending=True).values[: len(top)]
    return all(abs(v - r) < atol for (_, v), r in zip(top, ref_sorted.tolist()))


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
