"""Banned tokens (EOS before min_tokens) on logits made under inference_mode, as the engine
thread of a node hands them over: sampling must not write into the read-only tensor."""

import torch

from splitserve.engine.sampler import SampleRequest, sample
from splitserve.engine.sampling import SamplingParams


def test_banned_tokens_on_an_inference_tensor():
    with torch.inference_mode():
        logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    requests = [SampleRequest(SamplingParams(), 0, banned_token_ids=(1,)), SampleRequest(SamplingParams(), 0)]
    assert [s.token_id for s in sample(logits, requests)] == [2, 0]
    assert logits[0, 1] == 5.0  # the caller's tensor is unchanged
