"""values.schema.json: closed and typed everywhere, and Helm rejects bad values files with a
message that names the key; values.yaml documents every value it sets."""

from __future__ import annotations

import json

import pytest

from tests.helm.chart import goldens, render_error

SCHEMA = json.loads((goldens.CHART_DIR / "values.schema.json").read_text())


@pytest.mark.parametrize(
    "text, message",
    [
        ("decode:\n  replicas: four\n", "at '/decode/replicas': got string, want integer"),
        ("decode:\n  replica: 4\n", "at '/decode': additional properties 'replica' not allowed"),
        ("prefil:\n  enabled: true\n", "at '': additional properties 'prefil' not allowed"),
        ("node:\n  transport: nccl\n", "at '/node/transport': value must be one of 'torch', 'grpc'"),
        ("prefill:\n  engine:\n    maxNumSeq: 8\n", "at '/prefill/engine': additional properties 'maxNumSeq' not allowed"),
        ("router:\n  httpPort: 80000\n", "at '/router/httpPort'"),
    ],
)
def test_bad_values_file_is_rejected_with_the_key_it_breaks(tmp_path, text, message):
    path = tmp_path / "bad-values.yaml"
    path.write_text(text)
    error = render_error(goldens.load_values(path))
    assert "values don't meet the specifications of the schema" in error
    assert message in error


def _object_nodes(node, where="#"):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield where, node
        for key, value in node.items():
            yield from _object_nodes(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_nodes(value, f"{where}/{index}")


def test_every_declared_object_is_closed():
    nodes = list(_object_nodes(SCHEMA))
    assert len(nodes) > 30
    open_nodes = [where for where, node in nodes if node.get("additionalProperties") is not False]
    assert open_nodes == []


def _schema_at(path: str) -> dict | None:
    """The schema node of a dotted values path, or None below a pass-through Kubernetes object."""
    node = SCHEMA
    for part in path.split("."):
        node = node["properties"][part]
        while "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            if name.startswith("k8s."):
                return None
            node = SCHEMA["definitions"][name]
    return node


def test_every_value_is_documented_and_declared():
    keys = goldens.documented_keys(goldens.VALUES.read_text())
    assert len(keys) > 100
    undocumented = []
    for path, description in keys:
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent and _schema_at(parent) is None:
            continue  # inside a Kubernetes object passed through as is (resources, securityContext)
        try:
            _schema_at(path)
        except KeyError:
            pytest.fail(f"{path} is in values.yaml but not declared in values.schema.json")
        if not description:
            undocumented.append(path)
    assert undocumented == [], "values without a `# --` comment"
