"""vLLM's beam search as the router runs it (router/front/beam_search.py): against HF transformers'
`generate(num_beams=k)` with the in-process engine answering the steps, the EOS and length-penalty rules on a
made-up distribution, and the fields a beam search refuses."""

import asyncio
import math

import pytest
import torch

from router.front.beam_search import Beam, beam_results, beam_search, step_params, top_logprobs
from router.front.completion import Piece
from router.front.openai_models import ChatCompletionRequest, CompletionRequest, InvalidRequest
from splitserve.engine import Engine, EngineConfig, SamplingParams
from tests.support.hf_reference import hf_model
from tests.unit.test_engine_vs_hf import random_prompts


def engine_step(engine: Engine, width: int):
    async def step(prompts):
        results = engine.generate(prompts, step_params(SamplingParams(), width))
        return [r.logprobs[0][1] for r in results]
    return step


@pytest.mark.parametrize("width", [2, 4])
def test_beams_equal_hf_num_beams(tiny_model, width):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=512, max_num_batched_tokens=64))
    prompt = random_prompts(engine.tokenizer.vocab_size)[0]
    beams = asyncio.run(beam_search(engine_step(engine, width), prompt, width, 8, engine.tokenizer.eos_token_ids,
                                    ignore_eos=True))
    with torch.inference_mode():
        out = hf_model(str(tiny_model)).generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=8,
            min_new_tokens=8, num_beams=width, num_return_sequences=width, do_sample=False, eos_token_id=None,
            pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    assert [list(b.token_ids) for b in beams] == out.sequences[:, len(prompt):].tolist()
    # HF's sequence score: the summed logprob over the generated length (length_penalty 1)
    assert [b.cum_logprob / 8 for b in beams] == pytest.approx(out.sequences_scores.tolist(), abs=1e-4)


def table_step(table: dict[tuple, list[tuple[int, float]]]):
    async def step(prompts):
        return [table[tuple(p[2:])] for p in prompts]  # the 2-token prompt left out
    return step


EOS = 9
TABLE = {(): [(1, -0.1), (EOS, -0.2)], (1,): [(2, -2.0), (3, -2.5)], (1, 2): [(4, -0.1)], (1, 3): [(4, -0.1)]}


def test_a_beam_ending_in_eos_is_finished_and_scored_by_vllms_rule():
    beams = asyncio.run(beam_search(table_step(TABLE), [7, 7], 2, 3, (EOS,)))
    assert [(b.token_ids, b.ended) for b in beams] == [((EOS,), True), ((1, 2, 4), False)]
    assert beams[0].score(2, 1.0) == pytest.approx(-math.log(0.2 / 2))  # EOS not counted in the length
    # a strong enough length penalty makes the longer beam best: -2.2 / 5**3 > -0.2 / 2**3
    beams = asyncio.run(beam_search(table_step(TABLE), [7, 7], 2, 3, (EOS,), length_penalty=3.0))
    assert beams[0].token_ids == (1, 2, 4)
    (pieces, finish), (_, other) = beam_results([Beam((1, EOS), -1.0, True), Beam((2,), -1.0)], _Ids(), 0.5)
    assert pieces[0].token_ids == [1] and finish.reason == "stop" and finish.num_completion_tokens == 2
    assert other.reason == "length"


@pytest.mark.parametrize("penalty", [-1e300, -50.0, 0.0, 0.7, 50.0, 1e300])
def test_the_score_orders_beams_as_vllms_formula_without_overflowing(penalty):
    beams = [Beam((1,) * n, cum) for n, cum in [(1, -0.5), (3, -0.9), (6, -2.0), (2, 0.0), (4, -1e-9)]]
    order = sorted(beams, key=lambda b: b.score(3, penalty), reverse=True)
    if abs(penalty) < 100:  # where the formula itself is computable
        assert order == sorted(beams, key=lambda b: b.cum_logprob / (3 + len(b.token_ids)) ** penalty, reverse=True)
    assert order[0].cum_logprob == 0


class _Ids:
    @staticmethod
    def decode(ids):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("cls, body, param", [
    (CompletionRequest, {"prompt": "x", "use_beam_search": True, "n": 11}, "n"),
    (CompletionRequest, {"prompt": "x", "use_beam_search": True, "stream": True}, "stream"),
    (CompletionRequest, {"prompt": "x", "use_beam_search": True, "logprobs": 2}, "logprobs"),
    (CompletionRequest, {"prompt": "x", "use_beam_search": True, "stop": ["."]}, "stop"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}], "use_beam_search": True,
                             "response_format": {"type": "json_object"}}, "response_format"),
    (CompletionRequest, {"prompt": "x", "use_beam_search": True, "length_penalty": float("inf")}, "length_penalty"),
])
def test_what_a_beam_search_cannot_honour_is_refused(cls, body, param):
    with pytest.raises(InvalidRequest) as caught:
        cls.model_validate(body).check_supported()
    assert caught.value.param == param


def test_a_beam_search_takes_its_own_fields():
    CompletionRequest.model_validate({"prompt": "x", "use_beam_search": True, "n": 3, "max_tokens": 5,
                                      "ignore_eos": True, "length_penalty": 0.5, "temperature": 0,
                                      "stream": False}).check_supported()


def test_a_step_is_read_from_its_tokens_top_logprobs_and_one_without_a_token_is_a_clear_error():
    assert top_logprobs([Piece([], ""), Piece([7], "x", [(-0.1, [(7, -0.1), (3, -2.5)])])]) == [(7, -0.1), (3, -2.5)]
    with pytest.raises(RuntimeError, match="ended without a token"):
        top_logprobs([Piece([], "")])
