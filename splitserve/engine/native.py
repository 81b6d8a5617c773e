"""Builds and loads csrc/quant_linear.cpp (torch ops `splitserve_quant.*`) once per machine.

Compiled with g++ against the installed torch, for this CPU (-march=native), into
<cache>/native/<key>/, where the key covers the source, the torch build and the CPU's flags;
parallel processes build into their own temporary file and rename it into place. Needs g++ and
AVX2+FMA; without them (or on any build error) `quant_ops()` returns None, says why once, and the
engine keeps its fp32 linears.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from splitserve.modelgen.cache import default_cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "quant_linear.cpp"
DISABLE_ENV = "SPLITSERVE_NO_NATIVE"  # set to 1 to keep the fp32 linears
BUILD_TIMEOUT_S = 300


@lru_cache(maxsize=1)
def quant_ops():
    """torch.ops.splitserve_quant, built if needed; None when this machine cannot have it."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    reason = _unsupported_reason()
    if reason is None:
        try:
            torch.ops.load_library(str(_built_library()))
            return torch.ops.splitserve_quant
        except subprocess.CalledProcessError as exc:
            reason = f"building {SOURCE.name} failed: {exc.stderr[-2000:]}"
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            reason = f"loading {SOURCE.name} failed: {exc}"
    log.warning("quantized CPU linears unavailable (%s); using fp32 linears", reason)
    return None


def _unsupported_reason() -> str | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"needs x86-64, this is {platform.machine()}"
    flags = _cpu_flags()
    if not {"avx2", "fma"} <= flags:
        return "the CPU lacks AVX2 or FMA"
    if shutil.which("g++") is None:
        return "no g++ on the PATH (apt-get install -y g++)"
    return None


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _build_key() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(sorted(_cpu_flags())).encode())
    return digest.hexdigest()[:16]


def _built_library() -> Path:
    target = default_cache_root() / "native" / _build_key() / "quant_linear.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        subprocess.run(_compile_command(partial), check=True, capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT_S)
        os.replace(partial, target)
    return target


def _compile_command(output: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["g++", "-O3", "-march=native", "-fopenmp", "-std=c++20", "-shared", "-fPIC", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            str(SOURCE), f"-L{torch_dir / 'lib'}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_dir / 'lib'}",
            "-o", str(output)]


def build_now() -> None:
    """Builds now and says whether the kernels are there (make venv calls it; never fails)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print("native CPU kernels:", "ready" if quant_ops() is not None else "unavailable (fp32 linears will be used)")
