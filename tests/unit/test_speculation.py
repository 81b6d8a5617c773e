"""N-gram speculative decoding (splitserve/engine/speculation.py).

The lookup against a brute-force search; the config's refusals; on `tiny`, drafts from an oracle that knows plain
decoding's answer and spoils some drafts on purpose (random weights draft nothing by themselves), so every path
of checking them runs: all kept, the first or a later one refused, the request ending inside the drafts (EOS, a
stop token, max_tokens), penalties and bans over the drafts, seeded sampling, preemption, the prefix cache after
it. Every answer must equal plain decoding's. On SmolLM2 (real weights) the n-gram drafts themselves: greedy
answers equal HF transformers' with most drafts kept.
"""

import random

import pytest

from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.grammar import json_schema_grammar
from splitserve.engine.speculation import NgramSpeculation
from tests.support.hf_reference import assert_matches_hf, greedy_with, hf_model
from tests.unit.test_engine_vs_hf import random_prompts


def brute_force(tokens: list[int], spec: NgramSpeculation, limit: int) -> list[int]:
    for n in range(min(spec.max_ngram, len(tokens) - 1), spec.min_ngram - 1, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + min(limit, spec.num_tokens)]
    return []


def test_lookup_takes_the_longest_suffix_and_its_latest_earlier_occurrence():
    spec = NgramSpeculation(3, max_ngram=3, min_ngram=1)
    assert spec.propose([1, 2, 3, 9, 2, 3, 7, 8, 5, 2, 3], limit=8) == [7, 8, 5]  # latest "2 3"
    assert spec.propose([1, 2, 3, 4, 5, 0, 2, 3, 4, 6, 3, 4], limit=8) == [6, 3, 4]  # the latest "3 4"
    assert spec.propose([4, 5, 6, 4, 5], limit=2) == [6, 4]
    assert spec.propose([1, 2, 3], limit=8) == []
    assert spec.propose([7, 7], limit=8) == [7]
    assert spec.propose([1, 2, 1], limit=0) == []


def test_lookup_equals_a_brute_force_search_and_ignores_matches_across_token_boundaries():
    rng = random.Random(0)
    values = [0, 1, 256, 257, 65536, 1 << 32]  # byte patterns that line up across neighbouring tokens
    for trial in range(400):
        spec = NgramSpeculation(rng.randint(1, 5), max_ngram=rng.randint(2, 5), min_ngram=rng.randint(1, 2))
        tokens = [rng.choice(values) for _ in range(rng.randint(1, 40))]
        limit = rng.randint(0, 6)
        assert spec.propose(tokens, limit) == brute_force(tokens, spec, limit), (trial, tokens)


def test_config_as_vllm_spells_it():
    assert NgramSpeculation.from_json("") is None
    assert NgramSpeculation.from_json('{"method": "ngram", "num_speculative_tokens": 5}') == NgramSpeculation(5)
    assert NgramSpeculation.from_json('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}') \
        == NgramSpeculation(2, 2, 2)
    assert NgramSpeculation.from_json('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 6,'
                                      ' "disable_by_batch_size": 4}') == NgramSpeculation(2, 6, 6, 4)


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"), ("[]", "JSON object"), ('{"num_speculative_tokens": 3}', "method"),
    ('{"method": "eagle", "num_speculative_tokens": 3}', "method"), ('{"method": "ngram"}', "required"),
    ('{"method": "ngram", "num_speculative_tokens": 3, "model": "x"}', "unknown key"),
    ('{"method": "ngram", "num_speculative_tokens": "3"}', "integers"),
    ('{"method": "ngram", "num_speculative_tokens": true}', "integers"),
    ('{"method": "ngram", "num_speculative_tokens": 0}', "1 to 16"),
    ('{"method": "ngram", "num_speculative_tokens": 17}', "1 to 16"),
    ('{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 3, "prompt_lookup_max": 2}', "<="),
    ('{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 0}', "<="),
    ('{"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": -1}', ">= 0")])
def test_config_refusals_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        NgramSpeculation.from_json(text)


class Oracle:
    """Drafts the tokens plain decoding produced after a request's tokens so far (`answers`: prompt + output of
    each request), spoiling the draft at index `spoil(step)` (None: all good)."""

    def __init__(self, answers: list[list[int]], num_tokens: int = 3, spoil=lambda step: None, max_batch: int = 0):
        self.answers, self.num_tokens, self.spoil, self.max_batch = answers, num_tokens, spoil, max_batch
        self.step = 0

    def drafting(self, num_running: int) -> bool:
        return NgramSpeculation(1, max_batch=self.max_batch).drafting(num_running)

    def propose(self, token_ids: list[int], limit: int) -> list[int]:
        self.step += 1
        answer = next(a for a in self.answers if a[:len(token_ids)] == token_ids)
        drafts = answer[len(token_ids):len(token_ids) + min(limit, self.num_tokens)]
        bad = self.spoil(self.step)
        if bad is not None and bad < len(drafts):
            drafts[bad] = (drafts[bad] + 1) % 1024
        return drafts


def generate(tiny_model, prompts, params, speculative=None, **config):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=config.pop("num_blocks", 256),
                                             speculative=speculative, **config))
    results = engine.generate(prompts, params)
    engine.check_integrity()
    assert engine.num_used_blocks == 0
    return results, engine


def same_answers(tiny_model, prompts, params, spoil=lambda step: None, **config):
    plain, _ = generate(tiny_model, prompts, params, **config)
    answers = [list(p) + r.token_ids for p, r in zip(prompts, plain)]
    oracle = Oracle(answers, spoil=spoil)
    spec, engine = generate(tiny_model, prompts, params, speculative=oracle, **config)
    for a, b in zip(plain, spec):
        assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason and b.text == a.text
        for x, y in zip(a.logprobs, b.logprobs):
            assert abs(x[0] - y[0]) < 1e-4 and [t for t, _ in x[1]] == [t for t, _ in y[1]]
    return plain, engine


SPOILERS = {"none": lambda step: None, "first": lambda step: 0, "second": lambda step: 1,
            "mixed": lambda step: [None, 0, 2, 1][step % 4]}


@pytest.mark.parametrize("spoiler", SPOILERS)
def test_greedy_answers_equal_plain_decoding_whatever_the_drafts(tiny_model, spoiler):
    prompts = random_prompts(1024)[:4]
    params = SamplingParams(max_tokens=23, ignore_eos=True, logprobs=3)
    _, engine = same_answers(tiny_model, prompts, params, SPOILERS[spoiler])
    drafted, kept = engine.spec_counts
    assert drafted > 40
    assert kept == drafted if spoiler == "none" else 0 <= kept < drafted
    if spoiler == "none":
        assert engine.stats().spec_accepted_tokens == kept


def test_sampled_answers_equal_plain_decoding_with_seeds_penalties_and_bans(tiny_model):
    """A seeded request draws token n from (seed, n): the drafts change nothing; penalties, min_tokens and bad
    words see the drafts before each row as output."""
    prompts = random_prompts(1024)[1:4]
    bad = [[5, 6]]
    params = [SamplingParams(max_tokens=20, temperature=0.9, top_k=50, seed=7, ignore_eos=True),
              SamplingParams(max_tokens=20, repetition_penalty=1.5, frequency_penalty=0.7, presence_penalty=0.3,
                             ignore_eos=True, logprobs=2),
              SamplingParams(max_tokens=20, min_tokens=12, bad_word_ids=bad, temperature=0.7, seed=1)]
    for p in params:
        same_answers(tiny_model, prompts, p, SPOILERS["mixed"])


def test_a_request_ending_inside_its_drafts_ends_where_plain_decoding_does(tiny_model):
    prompts = random_prompts(1024)[2:4]
    plain, _ = generate(tiny_model, prompts, SamplingParams(max_tokens=24, ignore_eos=True))
    stop_token = plain[0].token_ids[9]  # a stop token the drafts carry past
    same_answers(tiny_model, prompts, SamplingParams(max_tokens=24, stop_token_ids=[stop_token]))
    same_answers(tiny_model, prompts, SamplingParams(max_tokens=7, ignore_eos=True))  # max_tokens inside drafts
    same_answers(tiny_model, prompts, SamplingParams(max_tokens=24, stop=[plain[1].text[10:14]]))


def test_drafts_under_preemption_and_a_small_token_budget(tiny_model):
    prompts = random_prompts(1024)[3:8]
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    same_answers(tiny_model, prompts, params, SPOILERS["mixed"], num_blocks=40, max_num_batched_tokens=9)


def test_the_prefix_cache_after_drafts_holds_the_right_tokens(tiny_model):
    """Blocks filled partly by kept drafts are registered with their tokens: a later request over prompt + answer
    reuses them and continues as plain decoding does."""
    prompt = random_prompts(1024)[5]
    params = SamplingParams(max_tokens=21, ignore_eos=True)
    [plain], _ = generate(tiny_model, [prompt], params)
    answer = list(prompt) + plain.token_ids
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, speculative=Oracle([answer])))
    engine.generate([prompt], params)
    [again] = engine.generate([answer[:-1]], SamplingParams(max_tokens=1, ignore_eos=True))
    assert again.num_cached_tokens >= len(answer) - 1 - 8 and again.token_ids == [answer[-1]]


def test_no_drafts_past_the_batch_size_limit(tiny_model):
    prompts = random_prompts(1024)[:3]
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    plain, _ = generate(tiny_model, prompts, params)
    answers = [list(p) + r.token_ids for p, r in zip(prompts, plain)]
    _, engine = generate(tiny_model, prompts, params, speculative=Oracle(answers, max_batch=2))
    assert engine.spec_counts == [0, 0]
    _, engine = generate(tiny_model, prompts[:2], params, speculative=Oracle(answers, max_batch=2))
    assert engine.spec_counts[0] > 0


def test_a_grammar_request_is_not_speculated(tiny_model):
    prompt = random_prompts(1024)[2]
    params = SamplingParams(max_tokens=8, grammar=json_schema_grammar({"enum": ["yes", "no", "yes yes yes"]}))
    plain, _ = generate(tiny_model, [prompt], params)
    [spec], engine = generate(tiny_model, [prompt], params, speculative=NgramSpeculation(3, min_ngram=1))
    assert spec.token_ids == plain[0].token_ids and engine.spec_counts == [0, 0]


QUOTED = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
          "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.")


def test_smollm2_quoting_its_prompt_keeps_most_drafts_and_answers_as_hf(smollm2_model, smollm2_hf_reference):
    engine = Engine(smollm2_model, EngineConfig(block_size=16, num_blocks=64, speculative=NgramSpeculation(3)))
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": f"Repeat this text exactly:\n\n{QUOTED}"}])
    [ours] = engine.generate([prompt], SamplingParams(max_tokens=40, ignore_eos=True, logprobs=5))
    assert_matches_hf(ours.token_ids, ours.logprobs, *greedy_with(hf_model(str(smollm2_hf_reference)), prompt, 40))
    drafted, kept = engine.spec_counts
    assert kept > 20 and kept / drafted > 0.6, engine.spec_counts
