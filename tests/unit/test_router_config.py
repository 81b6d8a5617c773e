"""The router's flags as its parser and config take them: --max-local-prefill-tokens
(tests/integration/test_conditional_disagg.py runs it in a cluster), --lora-store."""

import pytest

from router.config import RouterConfig
from splitserve.cli import build_parser


def config(*flags: str) -> RouterConfig:
    return RouterConfig.from_args(build_parser().parse_args(["router", "--model", "m", *flags]))


def test_conditional_disaggregation_is_off_by_default_and_takes_a_token_count(monkeypatch):
    monkeypatch.delenv("SPLITSERVE_MAX_LOCAL_PREFILL_TOKENS", raising=False)
    assert config().max_local_prefill_tokens == 0
    assert config("--max-local-prefill-tokens", "64").max_local_prefill_tokens == 64
    with pytest.raises(ValueError, match="--max-local-prefill-tokens must be >= 0"):
        config("--max-local-prefill-tokens", "-1")


def test_the_runtime_lora_store_is_memory_or_redis_and_needs_runtime_updating(monkeypatch):
    for name in ("SPLITSERVE_LORA_STORE", "SPLITSERVE_ALLOW_RUNTIME_LORA"):
        monkeypatch.delenv(name, raising=False)
    assert config().lora_store == "memory"
    url = "redis://127.0.0.1:6379/0"
    assert config("--allow-runtime-lora", "--lora-store", url).lora_store == url
    with pytest.raises(ValueError, match="--lora-store must be memory or a redis:// URL"):
        config("--allow-runtime-lora", "--lora-store", "postgres://x")
    with pytest.raises(ValueError, match="it needs --allow-runtime-lora"):
        config("--lora-store", url)
