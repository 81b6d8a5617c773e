"""Render the Helm chart's examples into golden files and its values table into the README.

    python scripts/render_helm_goldens.py          # rewrite tests/helm/golden/ and the README table
    python scripts/render_helm_goldens.py --check  # exit 1, naming the stale files, if any differ

Rendering uses Helm's own template engine through helm-python-sdk (Helm's Go SDK behind a C
ABI: no helm binary, no cluster). The tests in tests/helm load this file for the same helpers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "splitserve"
EXAMPLES_DIR = CHART_DIR / "examples"
GOLDEN_DIR = ROOT / "tests" / "helm" / "golden"
README = CHART_DIR / "README.md"
VALUES = CHART_DIR / "values.yaml"
RELEASE = "llm"
NAMESPACE = "serving"
TABLE_START = "<!-- values-table:start (scripts/render_helm_goldens.py) -->"
TABLE_END = "<!-- values-table:end -->"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_./\"-]+):(?: |$)")


def example_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("values-*.yaml"))


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict | None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce (schema checked first)."""
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests_text(rendered: dict[str, str]) -> str:
    """The manifests in `helm template` form: sorted by template, one `# Source:` per document."""
    parts = []
    for source in sorted(rendered):
        if source.endswith("NOTES.txt"):
            continue
        for doc in re.split(r"^---\s*$", rendered[source], flags=re.M):
            if doc.strip():
                parts.append(f"---\n# Source: {source}\n{doc.strip()}\n")
    return "".join(parts)


def golden_path(example: Path) -> Path:
    return GOLDEN_DIR / f"{example.stem}.yaml"


def documented_keys(values_text: str) -> list[tuple[str, str | None]]:
    """Every mapping key outside lists, as (dotted path, its `# --` description or None)."""
    keys: list[tuple[str, str | None]] = []
    stack: list[tuple[int, str | None]] = []  # (indent, key); None marks a list item
    pending: str | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
            continue
        if stripped.startswith("#") and pending is not None:
            pending += " " + stripped[1:].strip()
            continue
        indent = len(line) - len(line.lstrip())
        if not stripped or stripped.startswith("#"):
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        match = KEY_LINE.match(line)
        if stripped.startswith("- ") or not match:
            stack.append((indent, None))
        elif all(key is not None for _, key in stack):
            keys.append((".".join([k for _, k in stack] + [match["key"]]), pending))
            stack.append((indent, match["key"]))
        pending = None
    return keys


def _lookup(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def _type_name(value) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}
    return names.get(type(value), "string")


def values_table(values_text: str) -> str:
    """Markdown table of the documented values; an object whose children are documented gets no row."""
    values = yaml.safe_load(values_text)
    keys = [(path, text) for path, text in documented_keys(values_text) if text is not None]
    parents = {path.rsplit(".", 1)[0] for path, _ in keys if "." in path}
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, description in keys:
        if path in parents:
            continue
        value = _lookup(values, path)
        default = json.dumps(value, separators=(",", ":")).replace("|", "\\|")
        text = description.replace("|", "\\|")
        rows.append(f"| `{path}` | {_type_name(value)} | `{default}` | {text} |")
    return "\n".join(rows) + "\n"


def readme_with_table(readme_text: str, table: str) -> str:
    start, end = readme_text.index(TABLE_START), readme_text.index(TABLE_END)
    return readme_text[: start + len(TABLE_START)] + "\n\n" + table + "\n" + readme_text[end:]


def outputs() -> dict[Path, str]:
    """Every file this script owns, with the content it should have."""
    files = {golden_path(p): manifests_text(render(load_values(p))) for p in example_files()}
    files[README] = readme_with_table(README.read_text(), values_table(VALUES.read_text()))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    expected = outputs()
    stale = [path for path, text in expected.items() if not path.exists() or path.read_text() != text]
    for path in stale:
        if args.check:
            print(f"stale: {path.relative_to(ROOT)} (run: python scripts/render_helm_goldens.py)")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected[path])
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
