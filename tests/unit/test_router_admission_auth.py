"""API keys (file, environment, Bearer parsing) and admission (slots, Retry-After, deadlines)."""

import asyncio

import pytest

from router.front.admission import Admission, AdmissionConfig, DeadlineExceeded, Overloaded, bounded
from router.front.auth import ENV_VAR, ApiKeys


def test_keys_from_file_and_environment(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\nsk-file\n\n  sk-spaced  \n")
    keys = ApiKeys.from_sources(path, env={ENV_VAR: "sk-env1, sk-env2,"})
    assert len(keys) == 4 and keys.enabled
    for key in ("sk-file", "sk-spaced", "sk-env1", "sk-env2"):
        assert keys.allows(f"Bearer {key}") and keys.allows(f"bearer {key}")
    for header in (None, "", "sk-file", "Basic sk-file", "Bearer sk-fil", "Bearer # comment"):
        assert not keys.allows(header)


def test_no_keys_means_auth_is_off():
    keys = ApiKeys.from_sources(None, env={})
    assert not keys.enabled and keys.allows(None) and keys.allows("Bearer anything")


def test_unreadable_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="api-keys-file"):
        ApiKeys.from_sources(tmp_path / "missing", env={})


def test_admission_sheds_beyond_the_limit_and_frees_slots():
    admission = Admission(AdmissionConfig(max_requests=2, retry_after_s=0.2))
    first, second = admission.admit(), admission.admit()
    with pytest.raises(Overloaded) as err:
        admission.admit()
    assert err.value.retry_after == "1" and admission.num_rejected == 1
    first.release()
    first.release()  # idempotent
    assert admission.num_active == 1
    with admission.admit():
        assert admission.num_active == 2
    second.release()
    assert admission.num_active == 0


@pytest.mark.parametrize("config", [dict(max_requests=0), dict(retry_after_s=0), dict(timeout_s=-1)])
def test_admission_config_is_validated(config):
    with pytest.raises(ValueError):
        AdmissionConfig(**config)


def test_deadline_is_the_sooner_of_router_and_client():
    async def deadlines():
        loop = asyncio.get_running_loop()
        admission = Admission(AdmissionConfig(timeout_s=10.0))
        now = loop.time()
        return ([d - now for d in (admission.deadline(), admission.deadline(2.0), admission.deadline(30.0))],
                Admission(AdmissionConfig(timeout_s=0)).deadline())

    (router, client, later), none = asyncio.run(deadlines())
    assert router == pytest.approx(10, abs=0.5) and client == pytest.approx(2, abs=0.5)
    assert later == pytest.approx(10, abs=0.5) and none is None


def test_bounded_closes_the_source_at_the_deadline():
    closed = []

    async def slow():
        try:
            yield 1
            await asyncio.sleep(10)
            yield 2
        finally:
            closed.append(True)

    async def run():
        items = []
        with pytest.raises(DeadlineExceeded):
            async for item in bounded(slow(), asyncio.get_running_loop().time() + 0.05):
                items.append(item)
        return items

    assert asyncio.run(run()) == [1] and closed == [True]
