"""vLLM's cache_salt: prompts share cached prefix blocks only under the same salt (or none), in a node's engine and
in the router's guess of where a prefix is cached; a salted prompt skips the shared chunk cache."""

import pytest

from router.cluster.orchestrator import Orchestrator
from router.front.intake import Frontend
from splitserve.engine import Engine, EngineConfig, SamplingParams
from splitserve.chunkcache.keys import content_hash, salted_key
from splitserve.engine.block_pool import NO_HASH, block_hashes, root_hash
from splitserve.rpc.convert import sampling_from_proto, sampling_to_proto


def cached_tokens(engine: Engine, prompt: list[int], salt: str | None, lora: str | None = None) -> int:
    """The prompt tokens a request under this salt (and LoRA adapter) found in the engine's prefix cache."""
    rid = engine.add_request(prompt, SamplingParams(max_tokens=2, ignore_eos=True, cache_salt=salt, lora=lora))
    outs = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.request_id == rid]
    return outs[0].num_cached_tokens


def test_cached_blocks_are_shared_only_under_one_salt(tiny_model):
    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=128))
    prompt = list(range(5, 45))
    assert cached_tokens(engine, prompt, None) == 0
    assert cached_tokens(engine, prompt, None) == 36  # all full blocks but the one holding the last token
    assert cached_tokens(engine, prompt, "tenant-a") == 0
    assert cached_tokens(engine, prompt, "tenant-a") == 36
    assert cached_tokens(engine, prompt, "tenant-b") == 0
    engine.check_integrity()


def test_embeddings_share_cached_blocks_only_under_one_salt(tiny_model):
    """An embedding's prompt is cached under its salt like a generated one's (the two share it under one salt)."""
    from splitserve.engine import PoolingParams

    engine = Engine(tiny_model, EngineConfig(block_size=4, num_blocks=128))

    def embedding_cached(salt: str | None) -> int:
        rid = engine.add_embedding(prompt, PoolingParams(cache_salt=salt))
        outs = []
        while engine.has_unfinished():
            outs += [o for o in engine.step() if o.request_id == rid]
        return outs[-1].num_cached_tokens

    prompt = list(range(50, 90))
    assert embedding_cached("tenant-a") == 0 and embedding_cached("tenant-a") == 36
    assert embedding_cached(None) == 0 and embedding_cached("tenant-b") == 0
    assert cached_tokens(engine, prompt, "tenant-a") == 36 and cached_tokens(engine, prompt, "tenant-c") == 0
    with pytest.raises(ValueError, match="cache_salt"):
        PoolingParams(cache_salt="")


def test_the_router_hashes_a_salted_prompt_as_its_nodes_do():
    assert root_hash(None) == root_hash("") == NO_HASH != root_hash("a") != root_hash("b")
    prompt = list(range(40))
    assert block_hashes(prompt, 16) != block_hashes(prompt, 16, root_hash("a"))


def test_a_salted_prompts_chunks_have_salted_keys_and_its_salt_travels_to_the_nodes(tiny_model):
    frontend = Frontend.from_model_dir(tiny_model)
    ids, chunks = frontend.prompt_and_chunks(prompt="the question", documents=["a passage", "another passage"])
    plain = Orchestrator.route_request(frontend.job(ids, SamplingParams(max_tokens=2), "r", chunks))
    salted = Orchestrator.route_request(frontend.job(ids, SamplingParams(max_tokens=2, cache_salt="t"), "r", chunks))
    assert plain.chunk_keys == {content_hash(ids[s:s + n]) for s, n in chunks}
    assert salted.chunk_keys == {salted_key(k, "t") for k in plain.chunk_keys} and not salted.chunk_keys & plain.chunk_keys
    assert salted.hash_root == root_hash("t") and salted_key("k", None) == "k"
    params = SamplingParams(cache_salt="tenant-a")
    assert sampling_from_proto(sampling_to_proto(params)) == params


@pytest.mark.parametrize("salt", ["", "x" * 257, "tab\there"])
def test_a_bad_salt_is_refused(salt):
    with pytest.raises(ValueError, match="cache_salt"):
        SamplingParams(cache_salt=salt)


def test_per_key_salts_are_one_per_key_and_salt_and_need_keys(tiny_model):
    from router.config import SecurityConfig
    from router.front.intake import caller_salt
    from router.front.security import Security

    salts = {caller_salt(caller, salt) for caller in ("a" * 64, "b" * 64) for salt in (None, "x", "y")}
    assert len(salts) == 6 and caller_salt("a" * 64, None) == caller_salt("a" * 64, "")
    frontend = Frontend.from_model_dir(tiny_model)
    frontend.salt_per_caller = True
    job = frontend.job([5, 6, 7], SamplingParams(max_tokens=2, cache_salt="x"), "r", caller="a" * 64)
    assert job.params.cache_salt == caller_salt("a" * 64, "x")
    with pytest.raises(ValueError, match="needs API keys"):
        Security.load(SecurityConfig(cache_salt_per_key=True))
