"""LoRA adapters (splitserve/engine/lora.py) against PEFT's own model over HF transformers: greedy tokens and
logprobs with every projection targeted, rsLoRA and per-module ranks, adapters and the base model mixed in one
batch, the prefix cache kept apart per adapter, and clear refusals of what is not served."""

import json
import shutil

import pytest
import torch

from splitserve.engine import Engine, EngineConfig, ModelFormatError, SamplingParams
from splitserve.engine.lora_names import parse_lora_modules
from splitserve.rpc.convert import sampling_from_proto, sampling_to_proto
from tests.support.hf_reference import assert_matches_hf, greedy_with, hf_greedy
from tests.support.lora import peft_model, write_peft_adapter
from tests.unit.test_cache_salt import cached_tokens
from tests.unit.test_engine_vs_hf import random_prompts

STEPS = 8


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {"all": write_peft_adapter(tiny_model, root / "all", seed=1),
            "qv-rs": write_peft_adapter(tiny_model, root / "qv-rs", seed=2, targets=("q_proj", "v_proj"), rank=8,
                                        alpha=4, use_rslora=True),
            "mlp-ranks": write_peft_adapter(tiny_model, root / "mlp-ranks", seed=3,
                                            targets=("gate_proj", "down_proj", "o_proj"), rank=2,
                                            rank_pattern={"down_proj": 6})}


@pytest.fixture(scope="module")
def engine(tiny_model, adapters):
    config = EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=24,
                          lora_modules=tuple((name, str(path)) for name, path in adapters.items()))
    return Engine(tiny_model, config)


def greedy(lora: str | None) -> SamplingParams:
    return SamplingParams(max_tokens=STEPS, ignore_eos=True, logprobs=5, lora=lora)


def reference(tiny_model, adapters, name: str | None, prompt: list[int]):
    if name is None:
        return hf_greedy(tiny_model, prompt, STEPS)
    return greedy_with(peft_model(str(tiny_model), str(adapters[name])), prompt, STEPS)


@pytest.mark.parametrize("name", ["all", "qv-rs", "mlp-ranks"])
def test_an_adapter_generates_what_peft_generates(engine, tiny_model, adapters, name):
    prompt = random_prompts(1024)[2]
    [ours] = engine.generate([prompt], greedy(name))
    ids, logprobs = reference(tiny_model, adapters, name, prompt)
    assert_matches_hf(ours.token_ids, ours.logprobs, ids, logprobs)
    assert ours.token_ids != hf_greedy(tiny_model, prompt, STEPS)[0]  # the adapter changes the answer


def test_adapters_and_the_base_model_share_a_batch(engine, tiny_model, adapters):
    """Prompts prefilled in chunks across steps, beside decodes of other adapters: each equals its reference."""
    prompts = random_prompts(1024, seed=5)[:6]
    names = [None, "all", "qv-rs", "mlp-ranks", "all", None]
    results = engine.generate(prompts, [greedy(name) for name in names])
    for prompt, name, ours in zip(prompts, names, results):
        ids, logprobs = reference(tiny_model, adapters, name, prompt)
        assert_matches_hf(ours.token_ids, ours.logprobs, ids, logprobs)
    engine.check_integrity()


def test_an_adapters_prompts_share_cached_kv_only_with_that_adapter(engine):
    prompt = list(range(100, 140))
    assert cached_tokens(engine, prompt, None) == 0
    assert cached_tokens(engine, prompt, None, "all") == 0  # the base model's KV is not this adapter's
    assert cached_tokens(engine, prompt, None, "all") == 36
    assert cached_tokens(engine, prompt, None, "qv-rs") == 0
    assert SamplingParams(lora="a").kv_namespace != SamplingParams(cache_salt="a").kv_namespace
    assert SamplingParams(lora="a", cache_salt="t").kv_namespace not in (None, "t", SamplingParams(lora="a").kv_namespace)


def test_an_unknown_adapter_is_refused_and_changes_nothing(engine):
    with pytest.raises(ValueError, match="unknown LoRA adapter 'nope'; this node serves 'all', 'qv-rs', 'mlp-ranks'"):
        engine.add_request([5, 6, 7], SamplingParams(lora="nope"))
    assert not engine.has_unfinished()


def test_the_adapter_travels_in_the_sampling_params():
    params = SamplingParams(lora="all", cache_salt="t")
    assert sampling_from_proto(sampling_to_proto(params)) == params
    assert sampling_from_proto(sampling_to_proto(SamplingParams())).lora is None


@pytest.mark.parametrize("spec, message", [(["a"], "NAME=PATH"), (["a="], "NAME=PATH"), (["a b=/x"], "name"),
                                           (["a=/x", "a=/y"], "must differ")])
def test_bad_lora_flags_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_lora_modules(spec)


def test_lora_flags_parse():
    assert parse_lora_modules(["sql=/m/sql", "chat=/m/c=1"]) == (("sql", "/m/sql"), ("chat", "/m/c=1"))


def copy_with(folder, tmp_path, config_changes: dict | None = None, drop_safetensors: bool = False):
    target = tmp_path / "changed"
    shutil.copytree(folder, target)
    if config_changes:
        config = json.loads((target / "adapter_config.json").read_text())
        (target / "adapter_config.json").write_text(json.dumps({**config, **config_changes}))
    if drop_safetensors:
        (target / "adapter_model.safetensors").unlink()
        torch.save({}, target / "adapter_model.bin")
    return target


@pytest.mark.parametrize("changes, drop, message", [
    ({"use_dora": True}, False, "not served: use_dora"),
    ({"bias": "all"}, False, "not served: bias"),
    ({"modules_to_save": ["lm_head"]}, False, "not served: modules_to_save"),
    ({"peft_type": "IA3"}, False, "not a LoRA adapter"),
    ({"lora_alpha": "8"}, False, "lora_alpha must be a number"),
    (None, True, "pickled adapter_model.bin is not read"),
])
def test_adapters_the_engine_cannot_serve_exactly_are_refused(tiny_model, adapters, tmp_path, changes, drop, message):
    folder = copy_with(adapters["all"], tmp_path, changes, drop)
    with pytest.raises(ModelFormatError, match=message):
        Engine(tiny_model, EngineConfig(num_blocks=16, lora_modules=(("x", str(folder)),)))


def test_an_adapter_of_another_model_is_refused(tiny_model, adapters, tmp_path):
    """An adapter whose shapes are not the model's (trained on another) names the shapes it should have."""
    from safetensors.torch import load_file, save_file

    folder = copy_with(adapters["all"], tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 96)  # a hidden size of 96, not 64
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(ModelFormatError, match=r"do not fit a projection of 64 inputs and 128 outputs"):
        Engine(tiny_model, EngineConfig(num_blocks=16, lora_modules=(("x", str(folder)),)))


def test_weights_of_a_layer_the_model_lacks_are_refused(tiny_model, adapters, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_with(adapters["all"], tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.7.mlp.up_proj.lora_A.weight"] = torch.zeros(4, 64)
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(ModelFormatError, match="layer 7; the model has 2|lm_head"):
        Engine(tiny_model, EngineConfig(num_blocks=16, lora_modules=(("x", str(folder)),)))


def test_adapters_load_and_unload_at_runtime(tiny_model, adapters):
    """A name is served once; a request admitted before its adapter's unload ends on it; no block cached under it
    is found again, so another adapter loaded under the same name computes its own KV."""
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=128))
    engine.add_adapter(engine.read_adapter("x", adapters["all"]))
    with pytest.raises(ValueError, match="'x' is already loaded"):
        engine.add_adapter(engine.read_adapter("x", adapters["qv-rs"]))
    prompt = random_prompts(1024)[2]
    assert cached_tokens(engine, prompt, None, "x") == 0
    assert cached_tokens(engine, prompt, None, "x") > 0
    engine.add_request(prompt, greedy("x"), request_id="admitted")
    engine.step()
    engine.remove_adapter("x")
    outputs = []
    while engine.has_unfinished():
        outputs += [o for o in engine.step() if o.request_id == "admitted"]
    ids, logprobs = reference(tiny_model, adapters, "all", prompt)
    assert [t for o in outputs for t in o.new_token_ids] == ids[1:]
    with pytest.raises(KeyError, match="no LoRA adapter 'x'"):
        engine.remove_adapter("x")
    with pytest.raises(ValueError, match="unknown LoRA adapter 'x'"):
        engine.add_request(prompt, SamplingParams(lora="x"))
    engine.add_adapter(engine.read_adapter("x", adapters["qv-rs"]))
    assert cached_tokens(engine, prompt, None, "x") == 0
    [ours] = engine.generate([prompt], greedy("x"))
    assert_matches_hf(ours.token_ids, ours.logprobs, *reference(tiny_model, adapters, "qv-rs", prompt))
    engine.check_integrity()


def test_an_adapter_unloaded_while_a_request_is_between_prefill_and_decode_still_decodes_it(tiny_model, adapters):
    """Disaggregated: the decode node reserved blocks and the prefill node admitted the request before both unloaded
    the adapter; the prefill runs it (the request holds it) and so does the decode (its reservation does), giving
    PEFT's tokens. A reservation made after the unload is refused at admission, and the unloaded adapter is let go
    once no reservation waits for it."""
    import torch

    cfg = EngineConfig(block_size=4, num_blocks=128, lora_modules=(("x", str(adapters["all"])),))
    prefill, decode = Engine(tiny_model, cfg), Engine(tiny_model, cfg)
    prompt, params = random_prompts(1024)[2], greedy("x")
    assert decode.reserve("a", len(prompt)) is not None
    prefill.add_request(prompt, params, request_id="a", prefill_only=True, keep_blocks=True)
    prefill.remove_adapter("x")
    decode.remove_adapter("x")
    first = drain(prefill)
    src = torch.tensor(prefill.runner.slots(prefill.held_request("a").block_ids, 0, len(prompt)))
    dst = torch.tensor(decode.runner.slots(decode.reserved["a"], 0, len(prompt)))
    for layer in range(prefill.model_config.num_layers):
        kv = prefill.cache.read(layer, src)
        decode.cache.write(layer, dst, kv[0], kv[1])
    prefill.release("a")
    assert decode.reserve("b", len(prompt)) is not None
    decode.admit_prefilled("a", prompt, first[0], params)
    tokens = first + drain(decode)
    ids, _ = reference(tiny_model, adapters, "all", prompt)
    assert tokens == ids
    with pytest.raises(ValueError, match="unknown LoRA adapter 'x'"):
        decode.admit_prefilled("b", prompt, first[0], params)
    assert "b" not in decode.reserved and decode._retired == {}
    decode.check_integrity()
    assert decode.num_used_blocks == 0


def drain(engine) -> list[int]:
    """Steps the engine until it has nothing left; the tokens it generated."""
    tokens = []
    while engine.has_unfinished():
        tokens += [t for o in engine.step() for t in o.new_token_ids]
    return tokens


def test_the_stats_name_the_adapters_loaded_at_start_until_they_are_unloaded(tiny_model, adapters):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=32, lora_modules=(("x", str(adapters["all"])),)))
    engine.add_adapter(engine.read_adapter("y", adapters["qv-rs"]))
    assert (engine.stats().lora_adapters, engine.stats().startup_lora_adapters) == (("x", "y"), ("x",))
    engine.remove_adapter("x")
    engine.add_adapter(engine.read_adapter("x", adapters["all"]))  # loaded again at runtime: no longer the flags'
    assert (engine.stats().lora_adapters, engine.stats().startup_lora_adapters) == (("y", "x"), ())


def test_the_stats_count_each_adapters_requests_waiting_and_running(tiny_model, adapters):
    """What the nodes' splitserve_lora_requests_{waiting,running}{adapter} gauges read: every loaded adapter, 0 when
    idle; an unloaded one while a request still runs it."""
    modules = tuple((name, str(adapters[name])) for name in ("all", "qv-rs"))
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=128, max_num_seqs=2, lora_modules=modules))
    assert engine.stats().lora_requests == (("all", 0, 0), ("qv-rs", 0, 0))
    prompts = random_prompts(1024)[:3]
    for i, name in enumerate(("all", "all", None)):
        engine.add_request(prompts[i], greedy(name), request_id=f"r{i}")
    engine.add_request(prompts[0], greedy("qv-rs"), request_id="r3")
    engine.step()
    engine.remove_adapter("all")
    assert engine.stats().lora_requests == (("all", 0, 2), ("qv-rs", 1, 0))
    drain(engine)
    assert engine.stats().lora_requests == (("qv-rs", 0, 0),)
