"""LoRA adapter names and the NAME=PATH flags that load them (lora.py); torch-free, so the router reads them too."""

from __future__ import annotations

MAX_LORA_NAME_CHARS = 256


def check_lora_name(name) -> None:
    """ValueError unless `name` may name an adapter (in flags, in requests, as an OpenAI model id)."""
    if not (isinstance(name, str) and 0 < len(name) <= MAX_LORA_NAME_CHARS and name.isprintable()
            and " " not in name and "=" not in name and "," not in name):
        raise ValueError(f"a LoRA adapter name must be 1-{MAX_LORA_NAME_CHARS} printable characters without spaces, "
                         f"'=' or ',', got {name!r}")


def parse_lora_modules(specs) -> tuple[tuple[str, str], ...]:
    """`NAME=PATH` flags (vLLM's --lora-modules) as (name, path) pairs; ValueError for a malformed or repeated name."""
    modules = []
    for spec in specs or ():
        name, sep, path = str(spec).partition("=")
        if not sep or not path:
            raise ValueError(f"--lora-modules: expected NAME=PATH, got {spec!r}")
        check_lora_name(name)
        modules.append((name, path))
    names = [name for name, _ in modules]
    if len(set(names)) != len(names):
        raise ValueError(f"--lora-modules: adapter names must differ, got {names}")
    return tuple(modules)
