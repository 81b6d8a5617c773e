"""The router's --max-local-prefill-tokens as its parser and config take it
(tests/integration/test_conditional_disagg.py runs it in a cluster)."""

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
