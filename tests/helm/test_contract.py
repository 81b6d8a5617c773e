"""The chart and the package agree: the labels and roles the router's discovery reads
(splitserve/labels.py) are the ones the chart sets, and every container command line the chart
renders parses with the package's own argparse parser (the services are not run)."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from splitserve import labels
from splitserve.cli import build_parser
from tests.helm.chart import VALUES_FILES, config_env, goldens, manifests, of_kind, pod_specs, splitserve_containers

ALL_ROLES = "values-gpu-splitwise.yaml"  # the example that deploys prefill, decode and mixed


def _node_pods(docs):
    return [t for w, t in pod_specs(docs) if t["metadata"]["labels"].get(labels.COMPONENT_LABEL) == "node"]


def _selector(container) -> dict[str, str]:
    [value] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--k8s-selector=")]
    return dict(term.split("=", 1) for term in value.split(","))


def _flag(args: list[str], flag: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return value


def test_node_pods_carry_the_label_keys_and_roles_of_labels_py():
    docs = manifests(ALL_ROLES)
    roles = []
    for workload, template in pod_specs(docs):
        pod_labels = template["metadata"]["labels"]
        assert pod_labels[labels.NAME_LABEL] == labels.APP_NAME
        if pod_labels[labels.COMPONENT_LABEL] == "node":
            roles.append(pod_labels[labels.ROLE_LABEL])
            assert workload["metadata"]["name"].endswith("-" + pod_labels[labels.ROLE_LABEL])
        else:
            assert labels.ROLE_LABEL not in pod_labels
    assert sorted(roles) == sorted(labels.NODE_ROLES)


@pytest.mark.parametrize("name", VALUES_FILES)
def test_router_selector_selects_exactly_the_node_pods(name):
    docs = manifests(name)
    [router] = [c for _, c in splitserve_containers(docs) if c["args"][0] == "router"]
    assert _flag(router["args"], "--discovery") == "kubernetes"
    assert _flag(router["args"], "--k8s-namespace") == "serving"
    selector = _selector(router)
    assert selector[labels.NAME_LABEL] == labels.APP_NAME
    for workload, template in pod_specs(docs):
        pod_labels = template["metadata"]["labels"]
        selected = all(pod_labels.get(k) == v for k, v in selector.items())
        assert selected == (labels.ROLE_LABEL in pod_labels), workload["metadata"]["name"]


@pytest.mark.parametrize("name", VALUES_FILES)
def test_node_command_role_matches_its_pod_label(name):
    for workload, container in splitserve_containers(manifests(name)):
        if container["args"][0] == "node":
            role = workload["spec"]["template"]["metadata"]["labels"][labels.ROLE_LABEL]
            assert _flag(container["args"], "--role") == role


def test_chart_default_ports_are_the_package_defaults():
    values = yaml.safe_load(goldens.VALUES.read_text())
    assert values["router"]["grpcPort"] == labels.DEFAULT_ROUTER_GRPC_PORT
    assert values["router"]["httpPort"] == labels.DEFAULT_ROUTER_HTTP_PORT
    assert values["node"]["grpcPort"] == labels.DEFAULT_NODE_GRPC_PORT
    assert values["node"]["kvPort"] == labels.DEFAULT_KV_PORT
    assert values["node"]["metricsPort"] == labels.DEFAULT_METRICS_PORT


@pytest.mark.parametrize("name", VALUES_FILES)
def test_container_ports_are_the_ports_the_command_line_binds(name):
    flags = {"grpc": "--port", "http": "--http-port", "kv": "--kv-port", "metrics": "--metrics-port"}
    for _, container in splitserve_containers(manifests(name)):
        for port in container["ports"]:
            assert _flag(container["args"], flags[port["name"]]) == str(port["containerPort"])


def _parse(args: list[str], env: dict[str, str], monkeypatch):
    """Parse as the container would: flags read SPLITSERVE_* variables when the parser is built."""
    for key in [k for k in os.environ if k.startswith("SPLITSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`splitserve {' '.join(args)}` does not parse (argparse's error is in stderr)")


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_container_command_line_parses_with_the_package_parser(name, monkeypatch):
    docs = manifests(name)
    containers = splitserve_containers(docs)
    assert sorted({c["args"][0] for _, c in containers}) == ["node", "router"]
    consumed: set[str] = set()
    for _, container in containers:
        env = config_env(docs, container)
        args = container["args"]
        parsed = _parse(args, env, monkeypatch)
        assert parsed.command == args[0] and callable(parsed.func)
        for key, value in env.items():
            dest = key.removeprefix("SPLITSERVE_").lower()
            if key.startswith("SPLITSERVE_") and hasattr(parsed, dest):
                assert getattr(parsed, dest) == type(getattr(parsed, dest))(value), key
                # An explicit flag gets argparse's type and choices checks that env defaults skip.
                _parse(args + [f"--{dest.replace('_', '-')}={value}"], {}, monkeypatch)
                consumed.add(key)
    config = {k for cm in of_kind(docs, "ConfigMap") for k in cm["data"]}
    assert config == consumed, "ConfigMap variables no service flag reads"


@pytest.mark.parametrize("name", VALUES_FILES)
def test_variable_references_in_command_lines_are_defined(name):
    docs = manifests(name)
    for _, container in splitserve_containers(docs):
        defined = set(config_env(docs, container))
        referenced = {m for arg in container["args"] for m in re.findall(r"\$\((\w+)\)", arg)}
        assert referenced <= defined, container["name"]
