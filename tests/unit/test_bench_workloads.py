"""Workloads: prompt lengths with the model's tokenizer, Mooncake blocks, RAG order and popularity."""

import hashlib
import json
import re
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from splitserve.bench import traces
from splitserve.bench.workloads import RagWorkload, WorkloadConfig, make_workload
from tests.unit.bench_support import bench_model_dir, bench_tokenizer  # noqa: F401  (fixtures)


def _count(tok, text):
    return len(tok.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("input_len", [1, 17, 256, 1500])
def test_fixed_prompt_lengths(bench_tokenizer, input_len):
    reqs = list(islice(make_workload(WorkloadConfig(input_len=input_len, output_len=9), bench_tokenizer).requests(), 8))
    for r in reqs:
        assert abs(r.prompt_tokens - input_len) <= max(1, input_len // 100)
        assert _count(bench_tokenizer, r.prompt) == r.prompt_tokens
        assert r.output_tokens == 9 and r.documents is None
    if input_len > 1:
        assert len({r.prompt for r in reqs}) == len(reqs)  # different text per request


def test_length_distributions_are_sampled_and_clipped(bench_tokenizer):
    cfg = WorkloadConfig(name="sharegpt", seed=1, max_input_len=300, max_output_len=900)
    reqs = list(islice(make_workload(cfg, bench_tokenizer).requests(), 40))
    assert all(r.prompt_tokens <= 303 and 1 <= r.output_tokens <= 900 for r in reqs)
    assert len({r.output_tokens for r in reqs}) > 20 and max(r.output_tokens for r in reqs) == 900
    rows = traces.load_lengths(traces.data_file(traces.LENGTH_FILES["arxiv"]))
    assert len(rows) == 28257 and np.mean([r.input_len for r in rows]) == pytest.approx(2588, rel=0.01)


def test_azure_window_in_order(bench_tokenizer):
    w = make_workload(WorkloadConfig(name="azure-conv", window_s=(0.0, 30.0), max_input_len=64), bench_tokenizer)
    stamps, reqs = w.timestamps(), list(w.requests())
    assert len(reqs) == len(stamps) > 10 and stamps[0] == 0.0 and max(stamps) < 30.0
    assert [r.timestamp_s for r in reqs] == stamps
    assert reqs[0].output_tokens == 44 and reqs[0].prompt_tokens == 64  # first row: 374 in, 44 out; clipped


def _mooncake_file(tmp_path):
    rows = [
        {"timestamp": 0, "input_length": 1300, "output_length": 10, "hash_ids": [7, 8, 9]},
        {"timestamp": 250, "input_length": 1100, "output_length": 20, "hash_ids": [7, 8, 11]},
        {"timestamp": 1000, "input_length": 300, "output_length": 5, "hash_ids": [7]},
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_mooncake_same_hash_same_block(bench_tokenizer, tmp_path):
    w = make_workload(WorkloadConfig(name="mooncake", trace_file=str(_mooncake_file(tmp_path))), bench_tokenizer)
    a, b, c = list(w.requests())
    assert w.timestamps() == [0.0, 0.25, 1.0] and (a.output_tokens, b.output_tokens) == (10, 20)
    block7, block8 = w.source.block(7, 512), w.source.block(8, 512)
    assert a.prompt.startswith(block7 + block8) and b.prompt.startswith(block7 + block8)
    assert a.prompt[len(block7 + block8):] != b.prompt[len(block7 + block8):]  # hash 9 vs 11
    assert block7.startswith(c.prompt)  # a partial last block is a prefix of the same block
    for r in (a, b, c):
        assert _count(bench_tokenizer, r.prompt) == pytest.approx(r.prompt_tokens, rel=0.03)


def test_mooncake_needs_a_file(bench_tokenizer):
    with pytest.raises(ValueError, match="trace file"):
        make_workload(WorkloadConfig(name="mooncake"), bench_tokenizer)


def test_rag_shuffles_passages_and_follows_zipf(bench_tokenizer):
    cfg = WorkloadConfig(name="rag", rag_passages=4, rag_zipf=1.0, output_len=16, seed=5)
    w = make_workload(cfg, bench_tokenizer)
    assert isinstance(w, RagWorkload)
    reqs = list(islice(w.requests(), 3000))
    by_question = {q: set(p[:4]) for q, p in w.items}
    orders = Counter()
    for r in reqs:
        assert len(r.documents) == 4 and set(r.documents) == by_question[r.prompt]
        orders[(r.prompt, r.documents)] += 1
    top_question = w.items[int(np.argmax(w.popularity()))][0]
    top_orders = [docs for (q, docs) in orders if q == top_question]
    assert len(top_orders) > 10  # the same passage set arrives in many orders
    probs = w.popularity()
    assert sorted(probs)[-1] / sorted(probs)[-2] == pytest.approx(2.0)  # Zipf s=1: rank 1 vs rank 2
    freq = Counter(r.prompt for r in reqs)
    assert freq[top_question] / len(reqs) == pytest.approx(probs.max(), abs=0.025)
    first = reqs[0]
    assert first.prompt_tokens == _count(bench_tokenizer, first.prompt) + sum(_count(bench_tokenizer, d) for d in first.documents)


def test_rag_inline_and_uniform(bench_tokenizer):
    w = make_workload(WorkloadConfig(name="rag", rag_passages=2, rag_zipf=0.0, rag_inline=True), bench_tokenizer)
    r = next(w.requests())
    assert r.documents is None and r.prompt.count("\n\n") >= 2
    assert np.allclose(w.popularity(), 1 / len(w.items))


def test_missing_data_and_unknown_names(bench_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(traces.TRACES_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=traces.TRACES_ENV):
        make_workload(WorkloadConfig(name="azure-code"), bench_tokenizer)
    with pytest.raises(KeyError, match="fixed"):
        make_workload(WorkloadConfig(name="nope"), bench_tokenizer)
    with pytest.raises(ValueError):
        WorkloadConfig(window_s=(5.0, 1.0))


def test_rag_max_input_len_cuts_each_passage_to_its_share(bench_tokenizer):
    cfg = WorkloadConfig(name="rag", rag_passages=3, max_input_len=300, output_len=8, seed=2)
    full = next(make_workload(WorkloadConfig(name="rag", rag_passages=3, output_len=8, seed=2), bench_tokenizer).requests())
    cut = next(make_workload(cfg, bench_tokenizer).requests())
    count = lambda text: len(bench_tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    assert all(count(d) > 100 for d in full.documents)  # MuSiQue passages run ~900 tokens here
    assert all(count(d) <= 101 for d in cut.documents)  # re-tokenizing a cut may merge differently by a token
    assert [d[:40] for d in cut.documents] == [d[:40] for d in full.documents]
    assert cut.prompt_tokens < full.prompt_tokens
    assert full.output_tokens == cut.output_tokens == 8


@pytest.mark.parametrize("name", ["fixed", "rag"])
def test_max_output_len_clips_the_fixed_output_len_too(bench_tokenizer, name):
    cfg = WorkloadConfig(name=name, input_len=16, output_len=128, max_output_len=32)
    assert next(make_workload(cfg, bench_tokenizer).requests()).output_tokens == 32


def test_the_package_ships_the_data_its_readme_describes(monkeypatch, tmp_path):
    monkeypatch.delenv(traces.TRACES_ENV, raising=False)
    assert traces.traces_dir() == traces.SHIPPED_DIR and traces.SHIPPED_DIR.parent.name == "bench"
    readme = (traces.SHIPPED_DIR / "README.md").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    names = [*traces.AZURE_FILES.values(), *traces.LENGTH_FILES.values(), traces.MUSIQUE_FILE]
    assert sorted(listed) == sorted(names)
    sections = readme.split("\n## ")
    for name in names:
        [section] = [s for s in sections if f"`{name}`" in s.splitlines()[0]]
        assert all(field in section for field in ("**Source:**", "**Licence:**", "**Transformation:**"))
        assert hashlib.sha256(traces.data_file(name).read_bytes()).hexdigest() == listed[name]
    (tmp_path / traces.MUSIQUE_FILE).write_text("[]")
    monkeypatch.setenv(traces.TRACES_ENV, str(tmp_path))  # the override still wins
    assert traces.data_file(traces.MUSIQUE_FILE) == tmp_path / traces.MUSIQUE_FILE
