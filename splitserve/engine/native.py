"""Builds and loads the native CPU kernels in csrc/ once per machine: the Q4_1/Q8_0 linears (torch ops
`splitserve_quant.*`), decode attention over the paged KV cache (`splitserve_attention.*`) and
RMSNorm, RoPE and SiLU-and-multiply (`splitserve_layer.*`), and KV transfer's layer checksum
(`splitserve_kv.*`).

Compiled, into one library, with g++ against the installed torch, for every AVX2+FMA CPU
(-march=x86-64-v3: measured no slower than -march=native on an AMD Zen 3 and an Intel AVX-512 host)
or, on a CPU without that level's flags, for this CPU (-march=native), into <cache>/native/<key>/,
where the key covers the source, the torch build and the level (or, for native, the CPU's flags);
parallel processes build into their own temporary file and rename it into place. Needs g++ and
AVX2+FMA; without them (or on any build error) `quant_ops()`, `attention_ops()` and `layer_ops()`
return None, the reason is logged once, and the engine keeps torch's own ops.

$SPLITSERVE_NATIVE_MARCH picks the -march (native, or a level of LEVEL_FLAGS). A library built
ahead for a level into $SPLITSERVE_NATIVE_DIR is loaded from there on any machine of that level,
with no compiler: the container image ships one.
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

CSRC = Path(__file__).parent / "csrc"
SOURCES = (CSRC / "quant_linear.cpp", CSRC / "decode_attention.cpp", CSRC / "layer_ops.cpp", CSRC / "kv_ops.cpp")
HEADERS = (CSRC / "checks.h", CSRC / "simd.h")
LIBRARY = "splitserve_native.so"
DISABLE_ENV = "SPLITSERVE_NO_NATIVE"  # set to 1 to keep torch's own ops
MARCH_ENV = "SPLITSERVE_NATIVE_MARCH"  # g++ -march: a level such as x86-64-v3 (default where the CPU has it) or native
DIR_ENV = "SPLITSERVE_NATIVE_DIR"  # where libraries are built and looked for (default <cache>/native)
# what each -march level needs of the CPU (x86-64-v3: Haswell, Zen and later)
LEVEL_FLAGS = {"x86-64-v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "abm"}}
DEFAULT_LEVEL = "x86-64-v3"
BUILD_TIMEOUT_S = 300


def quant_ops():
    """torch.ops.splitserve_quant, built if needed; None when this machine cannot have it."""
    return torch.ops.splitserve_quant if _loaded() else None


def attention_ops():
    """torch.ops.splitserve_attention, built if needed; None when this machine cannot have it."""
    return torch.ops.splitserve_attention if _loaded() else None


def layer_ops():
    """torch.ops.splitserve_layer, built if needed; None when this machine cannot have it."""
    return torch.ops.splitserve_layer if _loaded() else None


def kv_ops():
    """torch.ops.splitserve_kv (KV transfer's layer checksum, alone or fused into its copies), built
    if needed; None when this machine cannot have it."""
    return torch.ops.splitserve_kv if _loaded() else None


@lru_cache(maxsize=1)
def _loaded() -> bool:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    reason = _unsupported_reason(needs_compiler=not _library_path().exists())
    if reason is None:
        try:
            torch.ops.load_library(str(_built_library()))
            return True
        except subprocess.CalledProcessError as exc:
            reason = f"building {LIBRARY} failed: {exc.stderr[-2000:]}"
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            reason = f"loading {LIBRARY} failed: {exc}"
    log.warning("native CPU kernels unavailable (%s); using torch's own ops", reason)
    return False


def _unsupported_reason(needs_compiler: bool = True) -> str | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"needs x86-64, this is {platform.machine()}"
    flags, march = _cpu_flags(), _march()
    if not {"avx2", "fma"} <= flags:
        return "the CPU lacks AVX2 or FMA"
    if march != "native" and not LEVEL_FLAGS.get(march, {"?"}) <= flags:
        return f"{MARCH_ENV}={march}: this CPU lacks {sorted(LEVEL_FLAGS.get(march, {march}) - flags)}"
    if needs_compiler and shutil.which("g++") is None:
        return "no g++ on the PATH (apt-get install -y g++)"
    return None


def _march() -> str:
    """$SPLITSERVE_NATIVE_MARCH, else DEFAULT_LEVEL where this CPU has its flags, else native."""
    chosen = os.environ.get(MARCH_ENV, "")
    if chosen:
        return chosen
    return DEFAULT_LEVEL if LEVEL_FLAGS[DEFAULT_LEVEL] <= _cpu_flags() else "native"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _build_key() -> str:
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    march = _march()
    digest.update((" ".join(sorted(_cpu_flags())) if march == "native" else f"-march={march}").encode())
    return digest.hexdigest()[:16]


def _library_path() -> Path:
    root = Path(os.environ[DIR_ENV]) if os.environ.get(DIR_ENV) else default_cache_root() / "native"
    return root / _build_key() / LIBRARY


def _built_library() -> Path:
    target = _library_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        subprocess.run(_compile_command(partial), check=True, capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT_S)
        os.replace(partial, target)
    return target


def _compile_command(output: Path, sources: tuple[Path, ...] = SOURCES) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["g++", "-O3", f"-march={_march()}", "-fopenmp", "-ffp-contract=off", "-std=c++20", "-shared", "-fPIC", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            *map(str, sources), f"-L{torch_dir / 'lib'}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_dir / 'lib'}",
            "-o", str(output)]


def build_now() -> None:
    """Builds now and says whether the kernels are there (make venv calls it; never fails)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print("native CPU kernels:", "ready" if quant_ops() is not None else "unavailable (fp32 linears will be used)")
