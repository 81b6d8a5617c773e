"""Rendering helpers shared by the Helm tests: the chart rendered once per values file.

The rendering itself lives in scripts/render_helm_goldens.py (the command that regenerates
the golden files); it is loaded here from its path.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "render_helm_goldens.py"
KUBE_VERSION = "1.36"  # Helm's default .Capabilities.KubeVersion; kubernetes-validate ships its schemas
CRD_KINDS = {"ServiceMonitor"}  # no upstream schema: checked by hand in test_render


def _load_script():
    spec = importlib.util.spec_from_file_location("render_helm_goldens", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


goldens = _load_script()
EXAMPLES = {path.name: path for path in goldens.example_files()}
VALUES_FILES = ["default", *EXAMPLES]  # "default" = the chart's values.yaml alone


def values_of(name: str) -> dict:
    return {} if name == "default" else goldens.load_values(EXAMPLES[name])


@functools.lru_cache(maxsize=None)
def rendered(name: str) -> dict[str, str]:
    return goldens.render(values_of(name) or None)


def manifests(name: str) -> list[dict]:
    docs = []
    for source, text in sorted(rendered(name).items()):
        if not source.endswith("NOTES.txt"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_specs(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod template) of every Deployment and StatefulSet."""
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def splitserve_containers(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, container) of every container that runs the `splitserve` command."""
    return [
        (workload, container)
        for workload, template in pod_specs(docs)
        for container in template["spec"]["containers"]
        if container.get("command") == ["splitserve"]
    ]


def config_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The variables a container gets from its envFrom ConfigMaps and literal env values."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<from valueFrom>")
    return env


def render_error(values: dict) -> str:
    """The message of a failed render (schema or template `fail`)."""
    import helm_python

    try:
        goldens.render(values)
    except helm_python.HelmError as error:
        return str(error)
    raise AssertionError(f"rendered without error: {values}")
