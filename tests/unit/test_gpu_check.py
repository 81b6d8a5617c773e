"""benchmarks/gpu_check.py, dry-run on the CPU with the tiny model: the one prepared run on a lent
GPU must not fail on its own logic (report fields, the HF comparison, the decode-rate table)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_end_to_end_on_the_cpu(tiny_model, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", _SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "DTYPE", "float32")
    out = tmp_path / "engine_gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--model", str(tiny_model), "--out", str(out),
                                      "--long-prompt", "40", "--batches", "1", "3", "--kv-cache-gib", "0.05"])
    rc = gpu_check.main()
    report = json.loads(out.read_text())
    assert rc == (0 if all(r["within_top5"] for r in report["greedy_vs_hf"]) else 1)
    assert [r["prompt_tokens"] for r in report["greedy_vs_hf"]] == [7, 64, 300, 1000]
    assert report["prefill_long_s"] > 0 and report["hf_prefill_long_s"] > 0
    assert set(report["decode_tok_s"]) == {"splitserve", "hf-transformers"}
    assert all(set(rates) == {"1", "3"} and min(rates.values()) > 0 for rates in report["decode_tok_s"].values())
    assert set(report["decode_step_ms_by_context"]) == {"128", "1024", "40"}
