"""The image built for real by scripts/build_image.sh (buildah, a local Debian bookworm base, this
machine's pip sources): the cpu and demo targets build, and a node and the router started from
the demo image answer a gRPC and an HTTP request. It takes tens of minutes of CPU, so it runs
only where buildah is installed and SPLITSERVE_IMAGE_BUILD=1 asks for it (as root)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helm.chart import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("buildah") or os.environ.get("SPLITSERVE_IMAGE_BUILD") != "1",
                       reason="needs buildah and SPLITSERVE_IMAGE_BUILD=1 (a real image build, tens of minutes)"),
]


@pytest.mark.timeout(5400)
def test_image_builds_and_serves_a_request():
    out = subprocess.run([str(ROOT / "scripts" / "build_image.sh")], capture_output=True, text=True, timeout=5400)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "== gRPC completion:" in log and "== HTTP completion:" in log
    assert "== 10001" in log and "Python 3.11" in log  # the chart's user, bookworm's python
    assert "== ok" in log.splitlines()[-1]
    sizes = [line for line in log.splitlines() if "splitserve:demo-" in line or "splitserve:0." in line]
    assert len(sizes) >= 2, log[-2000:]
