"""Sampling penalties: HF's repetition penalty and OpenAI's frequency / presence penalties, against HF
transformers' generate (its own repetition processor; OpenAI's documented formula as a logits processor)."""

import math

import pytest
import torch

from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.request import penalty_history
from splitserve.engine.sampler import SampleRequest, sample
from splitserve.rpc.convert import sampling_from_proto, sampling_to_proto
from tests.support.hf_reference import assert_matches_hf, hf_model
from tests.unit.test_engine_vs_hf import random_prompts

PENALTIES = dict(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.3)


def test_each_penalty_on_one_row():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0]])
    history = dict(prompt_token_ids=[0], output_token_ids=[1, 1, 2])
    (rep,) = sample(logits, [SampleRequest(SamplingParams(repetition_penalty=2.0, logprobs=5), 0, **history)])
    expected = torch.tensor([1.0, -2.0, 0.25, 3.0, 0.0])  # seen: 0 (prompt), 1, 2; positive / 2, negative * 2
    assert rep.token_id == 3 and rep.logprob == pytest.approx(float(torch.log_softmax(expected, 0)[3]))
    params = SamplingParams(frequency_penalty=1.5, presence_penalty=0.5, logprobs=5)
    (freq,) = sample(logits, [SampleRequest(params, 3, **history)])
    expected = torch.tensor([2.0, -1.0 - 3.0 - 0.5, 0.5 - 1.5 - 0.5, 3.0, 0.0])  # the prompt's token 0 is not output
    assert dict(freq.top_logprobs) == pytest.approx(dict(enumerate(torch.log_softmax(expected, 0).tolist())))
    assert torch.equal(logits, torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0]]))  # the caller's logits are left alone


def test_a_penalty_can_change_the_greedy_token():
    logits = torch.tensor([[1.0, 0.9]])
    req = SampleRequest(SamplingParams(frequency_penalty=0.2), 1, prompt_token_ids=[], output_token_ids=[0])
    assert sample(logits, [SampleRequest(SamplingParams(), 1)])[0].token_id == 0
    assert sample(logits, [req])[0].token_id == 1


@pytest.mark.parametrize("field, value", [("presence_penalty", 2.5), ("frequency_penalty", -3.0),
                                          ("repetition_penalty", 0.0), ("repetition_penalty", 11.0),
                                          ("presence_penalty", math.nan), ("repetition_penalty", math.inf)])
def test_out_of_range_penalties_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_penalties_travel_through_protobuf():
    params = SamplingParams(**PENALTIES)
    assert sampling_from_proto(sampling_to_proto(params)) == params
    assert sampling_from_proto(sampling_to_proto(SamplingParams())) == SamplingParams()  # unset: 1.0, off


def test_tokens_streamed_before_a_failover_count_as_output():
    assert penalty_history([1, 2, 3, 4], [5], 2) == ([1, 2], [3, 4, 5])
    assert penalty_history([1, 2], [], 0) == ([1, 2], [])


class OpenAIPenalties:
    """OpenAI's documented formula, mu[j] - c[j] * frequency - (c[j] > 0) * presence, c over the generated tokens."""

    def __init__(self, num_prompt_tokens: int, frequency: float, presence: float):
        self.start, self.frequency, self.presence = num_prompt_tokens, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, input_ids[:, self.start:], torch.ones_like(input_ids[:, self.start:], dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


def hf_penalized(model_dir, prompt: list[int], max_new: int, params: SamplingParams):
    from transformers import LogitsProcessorList

    processors = LogitsProcessorList([OpenAIPenalties(len(prompt), params.frequency_penalty, params.presence_penalty)])
    with torch.inference_mode():
        out = hf_model(str(model_dir)).generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, eos_token_id=None, pad_token_id=0,
            repetition_penalty=params.repetition_penalty, logits_processor=processors, output_scores=True,
            return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), torch.log_softmax(torch.stack(out.scores)[:, 0].float(), dim=-1)


@pytest.mark.parametrize("penalties", [PENALTIES, dict(repetition_penalty=0.8), dict(frequency_penalty=-0.7)],
                         ids=["all", "repetition_below_1", "negative_frequency"])
def test_penalized_greedy_batch_equals_hf(tiny_model, penalties):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24))
    prompts = random_prompts(engine.tokenizer.vocab_size)
    params = SamplingParams(max_tokens=24, ignore_eos=True, logprobs=5, **penalties)
    plain = engine.generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True))
    results = engine.generate(prompts, params)
    assert sum(r.token_ids != p.token_ids for r, p in zip(results, plain)) >= len(prompts) // 2  # penalties bite
    for prompt, result in zip(prompts, results):
        assert_matches_hf(result.token_ids, result.logprobs, *hf_penalized(tiny_model, prompt, 24, params))


def test_a_continuation_with_prior_output_tokens_generates_the_rest(tiny_model):
    """What a failover sends (prompt + tokens streamed, num_prior_output_tokens) continues the same stream."""
    engine = Engine(tiny_model, EngineConfig(num_blocks=64))
    prompt, params = random_prompts(engine.tokenizer.vocab_size)[4], SamplingParams(max_tokens=20, ignore_eos=True,
                                                                                    **PENALTIES)
    whole = engine.generate([prompt], params)[0].token_ids
    engine.add_request(prompt + whole[:7], params, "rest", num_prior_output_tokens=7)
    rest = []
    while engine.has_unfinished():
        rest += [t for out in engine.step() for t in out.new_token_ids]
    assert rest == whole[7:]
