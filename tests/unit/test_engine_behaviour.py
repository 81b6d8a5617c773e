"""Engine behaviour: batch invariance, prefix caching, preemption, stop conditions, bad input.

Every test ends with the pool's integrity check and zero used blocks.
"""

import random

import pytest

from splitserve.engine import Engine, EngineConfig, SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(block_size=4, num_blocks=512, max_num_batched_tokens=64))


def prompts(vocab, lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(n)] for n in lengths]


def assert_clean(engine):
    engine.check_integrity()
    assert engine.num_used_blocks == 0
    assert not engine.has_unfinished()


GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.9, top_p=0.9, top_k=50, seed=1234)


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_output_same_alone_and_in_a_batch_of_16(engine, params):
    vocab = engine.tokenizer.vocab_size
    target = prompts(vocab, [23], seed=1)[0]
    alone = engine.generate([target], params)[0].token_ids
    others = prompts(vocab, [1, 2, 5, 8, 13, 21, 34, 40, 3, 9, 15, 27, 33, 44, 60], seed=2)
    other_params = [SamplingParams(max_tokens=4 + i, ignore_eos=True, temperature=0.7, seed=i) for i in range(15)]
    batch = engine.generate(others[:7] + [target] + others[7:], other_params[:7] + [params] + other_params[7:])
    assert batch[7].token_ids == alone
    assert_clean(engine)


def test_different_seeds_differ_and_same_seed_repeats(engine):
    prompt = prompts(engine.tokenizer.vocab_size, [10])[0]
    runs = [engine.generate([prompt], SamplingParams(max_tokens=16, ignore_eos=True, temperature=1.0, seed=s))[0].token_ids
            for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]
    assert_clean(engine)


def test_shared_three_block_prefix_computes_only_the_suffix(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=64))
    prefix, suffix_a, suffix_b = prompts(engine.tokenizer.vocab_size, [12, 5, 6], seed=3)
    first = engine.generate([prefix + suffix_a], GREEDY)[0]
    assert first.num_cached_tokens == 0
    second = engine.generate([prefix + suffix_b], GREEDY)[0]
    assert second.num_cached_tokens == 12  # 3 full blocks reused, only the 6 suffix tokens computed
    fresh = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=64, enable_prefix_caching=False))
    assert fresh.generate([prefix + suffix_b], GREEDY)[0].token_ids == second.token_ids
    assert_clean(engine)


def test_computed_token_counter_with_prefix_hit(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=64))
    prefix, suffix = prompts(engine.tokenizer.vocab_size, [12, 6], seed=4)
    engine.generate([prefix + [7]], SamplingParams(max_tokens=1))
    engine.add_request(prefix + suffix, SamplingParams(max_tokens=1), request_id="b")
    plan = engine.scheduler.schedule()
    assert [(c.request.request_id, c.start, c.num_new_tokens) for c in plan.chunks] == [("b", 12, 6)]
    engine.abort("b")
    assert_clean(engine)


def test_preemption_with_a_small_pool_keeps_outputs(tiny_model):
    batch = prompts(256, [10, 20, 30, 15, 25, 5], seed=5)
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    big = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=512))
    small = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=20, max_num_batched_tokens=32))
    expected = [r.token_ids for r in big.generate(batch, params)]
    preempted = []
    original = small.scheduler.schedule

    def spy():
        out = original()
        preempted.extend(out.preempted)
        return out

    small.scheduler.schedule = spy
    assert [r.token_ids for r in small.generate(batch, params)] == expected
    assert preempted, "the pool was meant to be too small for the whole batch"
    assert_clean(small)


def test_stop_token_and_max_tokens(engine):
    prompt = prompts(engine.tokenizer.vocab_size, [8])[0]
    free_run = engine.generate([prompt], GREEDY)[0]
    stop_at = free_run.token_ids[4]
    stopped = engine.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True, stop_token_ids=(stop_at,)))[0]
    assert stopped.token_ids == free_run.token_ids[: free_run.token_ids.index(stop_at) + 1]
    assert stopped.finish_reason == "stop" and free_run.finish_reason == "length"
    assert_clean(engine)


def test_stop_string_cuts_text(engine):
    prompt = prompts(engine.tokenizer.vocab_size, [8], seed=9)[0]
    full = engine.generate([prompt], GREEDY)[0]
    printable = [c for c in full.text[3:] if c.isalnum()]
    if not printable:
        pytest.skip("this random model printed nothing to stop on")
    stop = printable[0]
    cut = engine.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert_clean(engine)


def test_streamed_text_equals_decode_of_tokens(engine):
    prompt = prompts(engine.tokenizer.vocab_size, [6], seed=11)[0]
    outs = list(engine.stream(prompt, GREEDY))
    tokens = [t for o in outs for t in o.new_token_ids]
    assert "".join(o.new_text for o in outs) == engine.tokenizer.decode(tokens)
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    assert_clean(engine)


BAD = [
    ([], SamplingParams(), "empty"),
    ([10**7], SamplingParams(), "vocabulary"),
    ([-1], SamplingParams(), "vocabulary"),
    ([5] * 2000, SamplingParams(max_tokens=100), "context length"),
]


@pytest.mark.parametrize("prompt, params, message", BAD)
def test_bad_input_is_rejected_and_others_keep_running(engine, prompt, params, message):
    good = engine.add_request([5, 6, 7], SamplingParams(max_tokens=3), request_id="good")
    engine.step()
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    while engine.has_unfinished():
        engine.step()
    assert good == "good"
    assert_clean(engine)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(stop=("",)), "stop"),
])
def test_bad_sampling_params_name_the_limit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_abort_frees_blocks_mid_generation(engine):
    rid = engine.add_request(prompts(engine.tokenizer.vocab_size, [30])[0], GREEDY)
    engine.step()
    assert engine.num_used_blocks > 0
    assert engine.abort(rid)
    assert not engine.abort("unknown")
    assert_clean(engine)


def _run(engine, tokens: dict[str, list[int]], steps: int | None = None) -> list[str]:
    """Step (to the end, or `steps` times), adding each request's new tokens to `tokens`; the ids finished."""
    finished = []
    while engine.has_unfinished() and (steps is None or len(finished) + steps > 0):
        for o in engine.step():
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
            finished += [o.request_id] if o.finished else []
        steps = None if steps is None else steps - 1
    return finished


@pytest.mark.parametrize("limit", ["sequences", "blocks"])
def test_a_waiting_request_of_lower_priority_value_preempts_running_ones(tiny_model, limit):
    """vLLM's priority scheduling: `urgent` (priority 0) arrives while two batch requests (priority 1) fill
    the engine (its one sequence slot, or its blocks); the last admitted is preempted, `urgent` finishes first,
    and every output equals the request run alone (preemption recomputes)."""
    config = EngineConfig(block_size=4, num_blocks=512, max_num_seqs=2) if limit == "sequences" else \
        EngineConfig(block_size=4, num_blocks=18, max_num_batched_tokens=32)
    engine = Engine(tiny_model, config)
    alone = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=512))
    batch_prompts, urgent_prompt = prompts(256, [30, 30], seed=7), prompts(256, [12], seed=8)[0]
    batch_params = SamplingParams(max_tokens=12, ignore_eos=True, priority=1)
    first = engine.add_request(batch_prompts[0], batch_params)
    second = engine.add_request(batch_prompts[1], batch_params)
    tokens = {}
    assert _run(engine, tokens, steps=2) == []
    assert {r.request_id for r in engine.scheduler.running} == {first, second}
    urgent = engine.add_request(urgent_prompt, SamplingParams(max_tokens=4, ignore_eos=True))
    preempted, original = [], engine.scheduler.schedule
    engine.scheduler.schedule = lambda: (out := original(), preempted.extend(out.preempted))[0]
    assert _run(engine, tokens)[0] == urgent
    assert preempted[0] == second and urgent not in preempted
    expected = alone.generate(batch_prompts + [urgent_prompt], [batch_params, batch_params,
                                                                 SamplingParams(max_tokens=4, ignore_eos=True)])
    assert [tokens[i] for i in (first, second, urgent)] == [c.token_ids for c in expected]
    assert_clean(engine)


def test_priorities_order_the_waiting_queue_and_equal_ones_never_preempt(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=512, max_num_seqs=1))
    texts = prompts(256, [8, 8, 8, 8], seed=9)
    ids = [engine.add_request(p, SamplingParams(max_tokens=3, ignore_eos=True, priority=value))
           for p, value in zip(texts, [0, 2, 1, 0])]
    preempted, original = [], engine.scheduler.schedule
    engine.scheduler.schedule = lambda: (out := original(), preempted.extend(out.preempted))[0]
    assert _run(engine, {}) == [ids[0], ids[3], ids[2], ids[1]] and preempted == []
    with pytest.raises(ValueError, match="priority must be an integer"):
        SamplingParams(priority=2**31)
    assert_clean(engine)
