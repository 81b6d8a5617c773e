"""The distribution a sampled token is drawn from, against HF transformers' logits warpers
(temperature, top-k, top-p, min-p, in the order `generate` runs them) on random logits: the
same tokens kept, the same probabilities."""

import pytest
import torch
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from splitserve.engine import SamplingParams
from splitserve.engine.sampler import distribution


def hf_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    warpers = [TemperatureLogitsWarper(p.temperature)]
    warpers += [TopKLogitsWarper(p.top_k)] if p.top_k else []
    warpers += [TopPLogitsWarper(p.top_p)] if p.top_p < 1 else []
    warpers += [MinPLogitsWarper(p.min_p)] if p.min_p else []
    scores = logits[None].clone()
    for warper in warpers:
        scores = warper(torch.zeros(1, 1, dtype=torch.long), scores)
    return torch.softmax(scores, dim=-1)[0]


@pytest.mark.parametrize("kwargs", [
    dict(temperature=1.0, min_p=0.05), dict(temperature=0.7, min_p=0.2), dict(temperature=1.3, min_p=0.5),
    dict(temperature=1.0, min_p=1.0), dict(temperature=0.9, top_k=40, min_p=0.1), dict(temperature=1.0, top_p=0.9),
    dict(temperature=0.8, top_p=0.8, min_p=0.1), dict(temperature=1.1, top_k=50, top_p=0.95, min_p=0.05),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_kept_tokens_and_probabilities_equal_hfs_warpers(kwargs):
    params = SamplingParams(**kwargs)
    for seed in range(20):
        logits = torch.randn(2048, generator=torch.Generator().manual_seed(seed)) * 3
        ours, theirs = distribution(logits, params), hf_probs(logits, params)
        assert torch.equal(ours > 0, theirs > 0), (seed, int((ours > 0).sum()), int((theirs > 0).sum()))
        torch.testing.assert_close(ours / ours.sum(), theirs, rtol=1e-5, atol=1e-7)


def test_min_p_out_of_range_is_refused():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_p"):
            SamplingParams(temperature=1.0, min_p=bad)
