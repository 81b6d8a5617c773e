"""OpenAI's logit_bias: added to the logits before the penalties (vLLM's order), against HF transformers' generate
(its `sequence_bias` processor), over protobuf, and refused with a clear error where it is malformed."""

import argparse

import pytest
import torch

from splitserve.commands.sampling_flags import add_sampling_flags, sampling_kwargs
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.sampler import SampleRequest, sample
from splitserve.rpc.convert import sampling_from_proto, sampling_to_proto
from tests.support.hf_reference import assert_matches_hf, hf_model
from tests.unit.test_engine_vs_hf import random_prompts

BIAS = {3: 4.0, 10: -100.0, 25: 2.5}


def test_bias_is_added_before_the_penalties():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    params = SamplingParams(logit_bias={0: 2.0, 2: -1.0}, repetition_penalty=2.0, logprobs=4)
    (got,) = sample(logits, [SampleRequest(params, 0, prompt_token_ids=[0, 2], output_token_ids=[])])
    expected = torch.tensor([(2.0 + 2.0) / 2, -1.0, (0.5 - 1.0) * 2, 3.0])
    assert got.token_id == 3  # 4 / 2 = 2 < 3: the penalty divides the biased logit
    assert dict(got.top_logprobs) == pytest.approx(dict(enumerate(torch.log_softmax(expected, 0).tolist())))
    assert torch.equal(logits, torch.tensor([[2.0, -1.0, 0.5, 3.0]]))  # the caller's logits are left alone


def test_minus_100_bans_a_token_and_plus_100_forces_it():
    logits = torch.tensor([[5.0, 0.0, -5.0]])
    assert sample(logits, [SampleRequest(SamplingParams(logit_bias={0: -100.0}), 0)])[0].token_id == 1
    forced = SamplingParams(logit_bias={2: 100.0}, temperature=1.0, seed=3)
    assert {sample(logits, [SampleRequest(forced, n)])[0].token_id for n in range(20)} == {2}


@pytest.mark.parametrize("bias, message", [({1: 100.5}, r"\[-100, 100\]"), ({1: float("nan")}, r"\[-100, 100\]"),
                                           ([(1, 1.0), (1, 2.0)], "twice"), ({-1: 1.0}, "token ids"),
                                           ({i: 1.0 for i in range(1025)}, "at most 1024")])
def test_malformed_bias_is_refused(bias, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(logit_bias=bias)


def test_bias_outside_the_vocabulary_is_refused_by_the_engine(tiny_model):
    engine = Engine(tiny_model, EngineConfig(num_blocks=16))
    vocab = engine.model_config.vocab_size
    with pytest.raises(ValueError, match="logit_bias token ids must be in"):
        engine.add_request([1, 2, 3], SamplingParams(logit_bias={vocab: 1.0}))
    assert not engine.has_unfinished()


def test_bias_travels_through_protobuf_and_the_cli_flags():
    params = SamplingParams(logit_bias={7: -100.0, 3: 0.125})
    assert sampling_from_proto(sampling_to_proto(params)) == params
    parser = argparse.ArgumentParser()
    add_sampling_flags(parser)
    args = parser.parse_args(["--logit-bias", "7=-100", "--logit-bias", "3=0.125"])
    assert SamplingParams(**sampling_kwargs(args)).logit_bias == params.logit_bias
    with pytest.raises(SystemExit):
        parser.parse_args(["--logit-bias", "7"])


def hf_biased(model_dir, prompt: list[int], max_new: int, bias: dict[int, float]):
    with torch.inference_mode():
        out = hf_model(str(model_dir)).generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, eos_token_id=None, pad_token_id=0,
            sequence_bias={(t,): b for t, b in bias.items()}, output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), torch.log_softmax(torch.stack(out.scores)[:, 0].float(), dim=-1)


def test_biased_greedy_batch_equals_hf(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24))
    prompts = random_prompts(engine.tokenizer.vocab_size)
    params = SamplingParams(max_tokens=16, ignore_eos=True, logprobs=5, logit_bias=BIAS)
    results = engine.generate(prompts, params)
    assert sum(r.token_ids.count(3) for r in results) > 0 and all(10 not in r.token_ids for r in results)
    for prompt, result in zip(prompts, results):
        assert_matches_hf(result.token_ids, result.logprobs, *hf_biased(tiny_model, prompt, 16, BIAS))
