"""`splitserve up`, `complete`, `embed` and `generate` as a user runs them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitserve.cli import main
from splitserve.engine import Engine, PoolingParams, SamplingParams

pytestmark = pytest.mark.slow


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "splitserve.cli", *args]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_up_serves_completes_and_stops_everything_on_sigterm(tiny_model):
    proc = subprocess.Popen(cli("up", "--model", str(tiny_model), "--port", "0", "--http-port", "-1", "--sample"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _serves_completes_and_stops_on_sigterm(proc, tiny_model)
    finally:  # a failed check must not leave the cluster running
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _serves_completes_and_stops_on_sigterm(proc: subprocess.Popen, tiny_model) -> None:
    lines, url, http_url = [], None, None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("cluster ready: router at "):
            url = line.split()[4]
            http_url = line.split("OpenAI API at ")[1].split()[0] if "OpenAI API at " in line else None
        if line.startswith("--- ") and "tokens" in line:
            break
    assert url and http_url and http_url.startswith("http://127.0.0.1:"), "".join(lines)
    assert "finish=" in lines[-1]  # the sample is a chat question on a model with a chat template
    children = children_of(proc.pid)
    assert len(children) == 3 + (shutil.which("redis-server") is not None)  # router, prefill, decode (, redis)

    prompt = "the quick brown fox"
    out = subprocess.run(cli("complete", "--url", url, "--prompt", prompt, "--max-tokens", "6", "--json"),
                         capture_output=True, text=True, timeout=60)
    result = json.loads(out.stdout)
    engine = Engine(tiny_model)
    expected = engine.generate([prompt], SamplingParams(max_tokens=6))[0]
    assert result["token_ids"] == expected.token_ids and result["text"] == expected.text
    out = subprocess.run(cli("complete", "--url", url, "--prompt", prompt, "--max-tokens", "6", "--json",
                             "--repetition-penalty", "3", "--frequency-penalty", "2"),
                         capture_output=True, text=True, timeout=60)
    penalized = engine.generate([prompt], SamplingParams(max_tokens=6, repetition_penalty=3.0, frequency_penalty=2.0))
    assert json.loads(out.stdout)["token_ids"] == penalized[0].token_ids != expected.token_ids
    schema = '{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"]}'
    out = subprocess.run(cli("complete", "--url", url, "--prompt", prompt, "--max-tokens", "24", "--json",
                             "--json-schema", schema), capture_output=True, text=True, timeout=60)
    assert set(json.loads(json.loads(out.stdout)["text"])) == {"n"}  # the answer is the schema's object
    out = subprocess.run(cli("embed", "--url", url, prompt, "fox", "--pooling", "mean"), capture_output=True, text=True,
                         timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["text"] for line in lines] == [prompt, "fox"]
    for line, vector in zip(lines, engine.embed([prompt, "fox"], PoolingParams("mean"))):
        assert max(abs(a - b) for a, b in zip(line["embedding"], vector)) < 1e-5
    # the nodes share the host's cores (--threads 0, the default): one share file, a slot each, idle once served
    shares = [_flag(pid, "--cpu-share") for pid in children if _flag(pid, "--role")]
    files = {share.rpartition(":")[0] for share in shares}
    assert len(shares) == 2 and len(files) == 1 and sorted(s.rpartition(":")[2] for s in shares) == ["0", "1"]
    share = Path(files.pop())
    deadline = time.monotonic() + 10
    while any(share.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(share.read_bytes())

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not share.parent.exists()  # the cluster's share folder goes with it
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _flag(pid: int, name: str) -> str | None:
    """The value of `name` on process pid's command line (None without it)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = f.read().decode().split("\0")
    return args[args.index(name) + 1] if name in args else None


# `generate` runs its handler in this process (the up test above covers `python -m splitserve.cli` itself)
def test_generate_json_batch(tiny_model, capsys):
    assert main(["generate", "--model", str(tiny_model), "--prompt", "a b", "--prompt", "c", "--max-tokens", "5",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(set(r) >= {"prompt_token_ids", "token_ids", "text"} for r in rows)
    assert all(len(r["token_ids"]) <= 5 for r in rows)


def test_generate_rejects_bad_input_with_a_message(tiny_model, capsys):
    assert main(["generate", "--model", str(tiny_model), "--prompt", "x", "--max-tokens", "0"]) == 2
    assert "max_tokens" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model), "--prompt", "x", "--repetition-penalty", "0"]) == 2
    assert "repetition_penalty" in capsys.readouterr().err
