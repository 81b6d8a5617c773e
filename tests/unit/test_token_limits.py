"""vLLM's allowed_token_ids and bad_words: the bans against HF transformers' own processors (NoBadWordsLogitsProcessor,
prefix_allowed_tokens_fn) in greedy generation, vLLM's tokenization of a bad word, their meeting with a grammar, and
their way through protobuf, the CLI flags and the engine's checks."""

import argparse
import random

import pytest
import torch
from transformers import NoBadWordsLogitsProcessor

from splitserve.commands.sampling_flags import add_sampling_flags, sampling_kwargs
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.grammar import regex_grammar
from splitserve.engine.token_limits import bad_word_bans, bad_word_token_ids, combined_mask, with_bad_word_ids
from splitserve.rpc.convert import sampling_from_proto, sampling_to_proto
from tests.support.hf_reference import assert_matches_hf, hf_model
from tests.unit.test_engine_vs_hf import random_prompts


def test_bans_equal_hf_no_bad_words_processor_on_random_histories():
    rng = random.Random(0)
    for _ in range(300):
        vocab = 12
        sequences = [[rng.randrange(vocab) for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 4))]
        output = [rng.randrange(vocab) for _ in range(rng.randint(1, 8))]
        hf = NoBadWordsLogitsProcessor(sequences, eos_token_id=None)
        scores = hf(torch.tensor([output]), torch.zeros(1, vocab))[0]
        assert set(bad_word_bans(sequences, output)) == set(torch.isinf(scores).nonzero().flatten().tolist())


def test_a_sequence_longer_than_the_output_bans_nothing_yet():
    assert bad_word_bans([(1, 2, 3)], [2]) == []
    assert bad_word_bans([(1, 2, 3)], [1, 2]) == [3]
    assert bad_word_bans([(5,)], []) == [5]


def test_a_word_is_banned_as_written_and_after_a_space(tiny_model):
    engine = Engine(tiny_model, EngineConfig(num_blocks=16))
    tok = engine.tokenizer
    (plain, spaced) = bad_word_token_ids(tok, ["river"])  # two tokens as written, one after a space
    assert list(plain) == tok.encode("river", add_special_tokens=False) and len(plain) == 2
    assert list(spaced) == tok.encode(" river", add_special_tokens=False) and len(spaced) == 1
    assert bad_word_token_ids(tok, ["  river"]) == (plain, spaced)  # leading spaces go, as in vLLM
    params = with_bad_word_ids(SamplingParams(bad_words=("river",), bad_word_ids=((7,),)), tok)
    assert params.bad_words == () and params.bad_word_ids == ((7,), plain, spaced)


def hf_limited(model_dir, prompt: list[int], max_new: int, **processors):
    with torch.inference_mode():
        out = hf_model(str(model_dir)).generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, eos_token_id=None, pad_token_id=0,
            output_scores=True, return_dict_in_generate=True, **processors)
    return out.sequences[0, len(prompt):].tolist(), torch.log_softmax(torch.stack(out.scores)[:, 0].float(), dim=-1)


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24))


def test_bad_words_greedy_equals_hf(engine, tiny_model):
    prompt = random_prompts(engine.tokenizer.vocab_size)[0]
    free = engine.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids
    # ban a token it chose, and the pair of tokens it chose next: the output must go another way twice
    sequences = ((free[2],), (free[5], free[6]))
    params = SamplingParams(max_tokens=12, ignore_eos=True, logprobs=5, bad_word_ids=sequences)
    result = engine.generate([prompt], params)[0]
    assert result.token_ids != free and free[2] not in result.token_ids
    assert all(result.token_ids[i:i + 2] != list(sequences[1]) for i in range(11))
    assert_matches_hf(result.token_ids, result.logprobs,
                      *hf_limited(tiny_model, prompt, 12, bad_words_ids=[list(s) for s in sequences]))


def test_allowed_token_ids_greedy_equals_hf(engine, tiny_model):
    prompt = random_prompts(engine.tokenizer.vocab_size)[1]
    allowed = [3, 17, 40, 41, 99]
    result = engine.generate([prompt], SamplingParams(max_tokens=10, ignore_eos=True, logprobs=3,
                                                      allowed_token_ids=tuple(allowed)))[0]
    assert set(result.token_ids) <= set(allowed)
    assert_matches_hf(result.token_ids, result.logprobs,
                      *hf_limited(tiny_model, prompt, 10, prefix_allowed_tokens_fn=lambda _batch, _ids: allowed))


def test_sampling_stays_inside_the_allowed_tokens(engine):
    prompt = random_prompts(engine.tokenizer.vocab_size)[2]
    params = SamplingParams(max_tokens=24, ignore_eos=True, temperature=1.5, seed=4, allowed_token_ids=(5, 6, 7))
    assert set(engine.generate([prompt], params)[0].token_ids) == {5, 6, 7}


def test_a_grammar_meets_the_allowed_tokens_and_wins_where_they_share_none(engine):
    tok = engine.tokenizer
    digits = [t for t in range(tok.vocab_size) if tok.decode([t]).strip().isdigit()][:40]
    prompt = tok.encode("Numbers:")
    params = SamplingParams(max_tokens=6, grammar=regex_grammar("[0-9]{1,6}"), allowed_token_ids=tuple(digits[:3]))
    text = engine.generate([prompt], params)[0].text
    assert text and set(text) <= set("".join(tok.decode([t]) for t in digits[:3]))
    grammar = torch.tensor([True, True, False, False])
    both = combined_mask(grammar, torch.tensor([False, True, True, False]))
    assert torch.equal(both, torch.tensor([False, True, False, False]))
    assert combined_mask(grammar, torch.tensor([False, False, True, True])) is grammar


def test_bad_words_count_output_tokens_carried_in_the_prompt_after_a_failover(engine):
    """A continuation's prompt ends with the tokens already streamed: they are output, and can begin a bad word."""
    prompt = random_prompts(engine.tokenizer.vocab_size)[0]
    free = engine.generate([prompt], SamplingParams(max_tokens=4, ignore_eos=True))[0].token_ids
    params = SamplingParams(max_tokens=4, ignore_eos=True, bad_word_ids=((free[2], free[3]),))
    rid = engine.add_request(prompt + free[:3], params, num_prior_output_tokens=3)
    tokens = []
    while engine.has_unfinished():
        tokens += [t for out in engine.step() if out.request_id == rid for t in out.new_token_ids]
    assert len(tokens) == 1 and tokens != [free[3]]


def test_limits_travel_through_protobuf_and_the_cli_flags():
    params = SamplingParams(allowed_token_ids=(9, 4), bad_word_ids=((1, 2), (3,)))
    assert sampling_from_proto(sampling_to_proto(params)) == params
    worded = SamplingParams(bad_words=("river", "sea"))
    assert sampling_from_proto(sampling_to_proto(worded), with_stop_strings=True) == worded
    assert sampling_from_proto(sampling_to_proto(worded)).bad_words == ()  # nodes read token ids only
    parser = argparse.ArgumentParser()
    add_sampling_flags(parser)
    args = parser.parse_args(["--bad-word", "river", "--bad-word", "sea", "--allowed-token-ids", "4,9",
                              "--cache-salt", "t"])
    expected = SamplingParams(bad_words=("river", "sea"), allowed_token_ids=(4, 9), cache_salt="t")
    assert SamplingParams(**sampling_kwargs(args)) == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["--allowed-token-ids", "4,x"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(bad_words=("",)), "non-empty"), (dict(bad_words=(" ",)), "non-empty"),
    (dict(bad_words=("w",) * 129), "at most 128"), (dict(bad_word_ids=((),)), "empty"),
    (dict(bad_word_ids=((1,) * 2049,)), "at most 2048"),
])
def test_malformed_limits_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, message", [(dict(allowed_token_ids=(1, 10**6)), "allowed_token_ids"),
                                             (dict(bad_word_ids=((1, 10**6),)), "bad word token ids")])
def test_ids_outside_the_vocabulary_are_refused_by_the_engine(engine, kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine.add_request([1, 2, 3], SamplingParams(**kwargs))
    assert not engine.has_unfinished()
