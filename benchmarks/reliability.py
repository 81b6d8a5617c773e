"""The chaos suite's long version: each fault 3 times under a 75 s load, a 30-minute soak.

    python benchmarks/reliability.py            # writes benchmarks/results/reliability.json

It runs `pytest tests/chaos` with SPLITSERVE_CHAOS_LONG=1 (see tests/chaos/conftest.py); the
short version (each fault once, a 2-minute soak) is part of `make test`. Takes ~45 minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    env = {**os.environ, "SPLITSERVE_CHAOS_LONG": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--timeout=7200",
               "tests/chaos", *sys.argv[1:]]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
