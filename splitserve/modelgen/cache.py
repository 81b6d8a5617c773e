"""`ensure_model`: build a preset once into a cache folder and reuse it.

Built in a temporary folder next to the target and renamed into place, so parallel test
processes never see a half-written model: the loser of a race drops its copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from splitserve.modelgen.presets import check_preset_name
from splitserve.modelgen.writer import make_model

FORMAT_VERSION = 1  # bump when the generated files change for the same preset and seed
CACHE_ENV = "SPLITSERVE_CACHE"


def default_cache_root() -> Path:
    """$SPLITSERVE_CACHE, else .cache in the source checkout, else ~/.cache/splitserve."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        return repo / ".cache"
    return Path.home() / ".cache" / "splitserve"


def ensure_model(preset: str, cache_root=None, seed: int = 0) -> Path:
    """<cache_root>/models/<preset>-s<seed>-v<FORMAT_VERSION>, built if missing."""
    check_preset_name(preset)
    final = Path(cache_root or default_cache_root()) / "models" / f"{preset}-s{seed}-v{FORMAT_VERSION}"
    return build_once(final, lambda tmp: make_model(preset, tmp, seed=seed))


def build_once(final: Path, build: Callable[[Path], object]) -> Path:
    """`final`, made by build(tmp folder) and renamed into place unless it already exists."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)
        _rename_unless_present(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _rename_unless_present(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
