"""The chunk cache on one CUDA device (skipped without a GPU): documents through a colocated node
and through 1 prefill + 1 decode node (KV over gRPC) with the model on CUDA, the local chunk tier
only (no Redis there). A miss takes the plain path and equals the single-process engine on CUDA;
the same passages in another order are blended from the stored chunk KV."""

import json

import pytest
import torch

from router.front.intake import Frontend
from splitserve.bench import traces
from splitserve.client import Client
from splitserve.engine import Engine, EngineConfig, SamplingParams
from tests.support.cluster import ParallelCluster, node_stats, wait_until

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICE = "cuda"
LAYOUTS = {"1p1d": dict(prefill=1, decode=1), "colocated": dict(prefill=0, decode=0, colocated=1)}


def _documents(n: int) -> list[str]:
    ctxs = [c["text"] for q in json.loads(traces.data_file(traces.MUSIQUE_FILE).read_text())[:4] for c in q["ctxs"]]
    return [c[:400] for c in ctxs[:n]]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_documents_miss_then_blend_on_cuda(tiny_model, layout):
    docs, question = _documents(3), "which of these is the oldest?"
    ids, _ = Frontend.from_model_dir(tiny_model).prompt_and_chunks(prompt=question, messages=None, documents=docs)
    expected = Engine(tiny_model, EngineConfig(device=DEVICE)).generate([ids], SamplingParams(max_tokens=8, ignore_eos=True))
    node_args = [f"--device={DEVICE}", "--transfer-timeout-s=20"]
    with ParallelCluster(tiny_model, transport="grpc", node_args=node_args, **LAYOUTS[layout]) as cluster:
        prefill = next(s.address for role, s in cluster.nodes if role in ("prefill", "mixed"))
        with Client(cluster.url, timeout_s=60) as client:
            first = client.complete(prompt=question, documents=docs, max_tokens=8, ignore_eos=True)
            assert first.token_ids == expected[0].token_ids
            assert wait_until(lambda: node_stats(prefill).chunk_cache.num_local_chunks == 3, 30)
            blended = client.complete(prompt=question, documents=docs[::-1], max_tokens=8, ignore_eos=True)
        stats = node_stats(prefill).chunk_cache
    assert len(blended.token_ids) == 8 and blended.final.cached_tokens > 0
    assert stats.blended_requests == 1 and stats.local_hits == 3
