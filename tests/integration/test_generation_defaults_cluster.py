"""A model's recommended sampling defaults reach the sampler through a real cluster's OpenAI API: the
tiny model with `top_k: 1` in its generation_config.json answers a request that sets no sampling
settings greedily; the same request with `top_k: 0` does not (the default is what made it greedy)."""

import json
import shutil

import openai
import pytest

from tests.support.cluster import ParallelCluster

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Where is the river?"}]


@pytest.fixture(scope="module")
def api(tiny_model, tmp_path_factory):
    folder = shutil.copytree(tiny_model, tmp_path_factory.mktemp("recommended") / "tiny-s0-v1")
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "temperature": 0.5, "top_k": 1}))
    with ParallelCluster(folder, prefill=0, decode=0, colocated=1, http_port=-1) as cluster:
        with openai.OpenAI(base_url=cluster.http_url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
            yield client


def answer(api, **kwargs) -> str:
    return api.chat.completions.create(model="tiny-s0-v1", messages=MESSAGES, max_tokens=10, seed=7,
                                       extra_body={"ignore_eos": True, **kwargs.pop("extra", {})},
                                       **kwargs).choices[0].message.content


def test_what_a_request_leaves_out_comes_from_the_model(api):
    greedy = answer(api, temperature=0)
    assert answer(api) == greedy  # temperature 0.5 and top-k 1 from generation_config.json
    assert answer(api, temperature=1.0, extra={"top_k": 0}) != greedy
    response = api.responses.create(model="tiny-s0-v1", input="Where is the river?", max_output_tokens=4)
    assert response.temperature == 0.5 and response.top_p == 1.0
