"""Regressions for what the fuzz tests (tests/fuzz/) found, pinned in one process and fast: each
hostile input is a ValueError (INVALID_ARGUMENT at the node) that frees what it took, or a
normal result; none fails an engine step, which would fail every request in that batch."""

from __future__ import annotations

import json

import pytest
import torch

from splitserve.chunkcache.format import CorruptValue
from splitserve.chunkcache.variants import VariantMeta
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.engine.sampler import SampleRequest, sample

PROMPT = list(range(5, 25))


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(tiny_model, EngineConfig(block_size=4, num_blocks=32))


@pytest.mark.parametrize("temperature", [1e-45, 1e-38, 1e-30])
def test_a_tiny_temperature_samples_like_greedy(temperature):
    logits = torch.randn(3, 50)
    requests = [SampleRequest(SamplingParams(temperature=temperature, seed=i), 0) for i in range(3)]
    assert [s.token_id for s in sample(logits, requests)] == logits.argmax(dim=-1).tolist()


def test_banning_every_token_bans_none():
    params = SamplingParams(temperature=1.0, seed=1, min_tokens=5, stop_token_ids=tuple(range(8)))
    (s,) = sample(torch.randn(1, 8), [SampleRequest(params, 0, banned_token_ids=tuple(range(8)))])
    assert 0 <= s.token_id < 8


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -1.0])
def test_temperature_must_be_finite_and_non_negative(temperature):
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=temperature)


def test_stop_token_ids_outside_the_vocabulary_are_refused(engine):
    with pytest.raises(ValueError, match="stop token ids"):
        engine.validate(PROMPT, SamplingParams(min_tokens=2, stop_token_ids=(2**32 - 1,)), "r")


@pytest.mark.parametrize("prompt, first", [(PROMPT, 2**32 - 1), (PROMPT + [5] * 8, 7), ([], 7), (PROMPT, -1)],
                         ids=["first-token-out-of-vocab", "prompt-longer-than-reserved", "empty-prompt", "negative"])
def test_a_bad_admission_cancels_the_reservation(engine, prompt, first):
    assert engine.reserve("r", len(PROMPT)) is not None
    with pytest.raises(ValueError):
        engine.admit_prefilled("r", prompt, first, SamplingParams(max_tokens=4))
    assert "r" not in engine.reserved and engine.num_used_blocks == 0


def test_admitting_without_a_reservation_is_a_value_error(engine):
    with pytest.raises(ValueError, match="no KV blocks are reserved"):
        engine.admit_prefilled("nobody", PROMPT, 7, SamplingParams(max_tokens=4))


def test_a_reservation_under_the_empty_id_blocks_no_other_admission(engine):
    assert engine.reserve("", 4) is not None and engine.reserve("ok", len(PROMPT)) is not None
    engine.admit_prefilled("ok", PROMPT, 7, SamplingParams(max_tokens=1))  # finishes at once: max_tokens 1
    engine.cancel_reservation("")
    assert engine.num_used_blocks == 0


@pytest.mark.parametrize("fields", [{"num_tokens": 0, "token_inter": []}, {"start": -1}, {"num_bytes": -5},
                                    {"prefix_keys": ["a"], "prefix_lengths": [-4], "inter": [0.5]},
                                    {"start": 1e400}], ids=lambda f: ",".join(f))
def test_out_of_range_chunk_metadata_is_corrupt(fields):
    body = {"v": 1, "chunk": "c", "prefix_hash": "p", "start": 1, "num_tokens": 2, "num_bytes": 0, "prefix_keys": [],
            "prefix_lengths": [], "inter": [], "intra": 1.0, "token_inter": []} | fields
    with pytest.raises(CorruptValue):
        VariantMeta.from_json(json.dumps(body).encode())


def test_deeply_nested_chunk_metadata_is_corrupt():
    with pytest.raises(CorruptValue):
        VariantMeta.from_json(b"[" * 100_000)


@pytest.mark.parametrize("field", ["max_tokens", "top_k", "min_tokens"])
def test_counts_beyond_uint32_are_refused_by_name(field):
    with pytest.raises(ValueError, match=f"{field} must be in"):  # not the wire's "Value out of range"
        SamplingParams(**{field: 2**32})
