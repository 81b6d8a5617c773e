"""The profile Job (profile.enabled) and the KV checksum value (node.kvChecksum), rendered by Helm's
own engine; command lines parsed with the package's parser as the containers would parse them."""

from __future__ import annotations

import functools
import os

import kubernetes_validate
import pytest
import yaml

from splitserve.cli import build_parser
from tests.helm.chart import KUBE_VERSION, config_env, goldens, manifests, of_kind, splitserve_containers

GPU = "values-gpu-splitwise.yaml"


@functools.lru_cache(maxsize=None)
def render(values_yaml: str) -> list[dict]:
    texts = goldens.render(yaml.safe_load(values_yaml))
    return [d for s, t in sorted(texts.items()) if not s.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]


def parse(args: list[str], env: dict[str, str], monkeypatch):
    for key in [k for k in os.environ if k.startswith("SPLITSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return build_parser().parse_args(args)


def the_job(docs: list[dict]) -> tuple[dict, dict]:
    [job] = of_kind(docs, "Job")
    [container] = job["spec"]["template"]["spec"]["containers"]
    return job, container


def test_no_job_unless_enabled():
    docs = manifests("default")
    assert not of_kind(docs, "Job")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-profile")]


def test_the_job_profiles_the_pools_node_into_the_configmap(monkeypatch):
    docs = manifests(GPU)
    job, container = the_job(docs)
    args = parse(container["args"], config_env(docs, container), monkeypatch)
    assert args.command == "profile" and callable(args.func)
    [configmap] = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == args.configmap]
    assert args.namespace == configmap["metadata"]["namespace"] == job["metadata"]["namespace"]
    deployments = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in of_kind(docs, "Deployment")}
    pod = deployments["decode"]["spec"]["template"]["spec"]
    [node] = [c for c in pod["containers"] if c["name"] == "node"]
    node_args = parse(node["args"], config_env(docs, node), monkeypatch)
    for name in ("model", "device", "dtype", "threads", "num_blocks", "kv_cache_bytes", "block_size", "max_num_seqs",
                 "max_batched_tokens", "one_shot_max_tokens"):
        assert getattr(args, name) == getattr(node_args, name), name
    assert args.backends == node_args.transport == "torch"
    job_pod = job["spec"]["template"]["spec"]
    assert container["image"] == node["image"] and container["resources"] == node["resources"]
    for key in ("nodeSelector", "tolerations", "affinity", "runtimeClassName", "securityContext"):
        assert job_pod.get(key) == pod.get(key), key
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["model"] == "/models"
    assert job_pod["restartPolicy"] == "Never"


def test_the_jobs_account_may_only_patch_its_configmap():
    docs = manifests(GPU)
    job, container = the_job(docs)
    account = job["spec"]["template"]["spec"]["serviceAccountName"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    bindings = [b for b in of_kind(docs, "RoleBinding") if any(s["name"] == account for s in b["subjects"])]
    assert [b["roleRef"]["kind"] for b in bindings] == ["Role"] and not of_kind(docs, "ClusterRoleBinding")
    [role] = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == bindings[0]["roleRef"]["name"]]
    configmap = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--configmap="))
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [configmap],
                              "verbs": ["get", "patch"]}]
    assert account in {a["metadata"]["name"] for a in of_kind(docs, "ServiceAccount")}


def test_the_job_follows_the_chosen_pool_and_its_options(monkeypatch):
    docs = render("{profile: {enabled: true, pool: prefill, quick: true, backends: 'torch,grpc', extraArgs: ['--plot=/tmp/p.png']},"
                  " prefill: {engine: {maxBatchedTokens: 512}}, node: {transport: grpc}}")
    for doc in docs:
        if doc["kind"] not in ("ServiceMonitor",):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    job, container = the_job(docs)
    args = parse(container["args"], config_env(docs, container), monkeypatch)
    assert (args.quick, args.backends, args.max_batched_tokens, args.plot) == (True, "torch,grpc", 512, "/tmp/p.png")
    assert job["metadata"]["name"].endswith("-profile-1")  # one Job per release revision


@pytest.mark.parametrize("checksum", [True, False])
def test_kv_checksum_value_reaches_every_node(checksum, monkeypatch):
    docs = render(f"{{node: {{kvChecksum: {str(checksum).lower()}}}, mixed: {{enabled: true}}}}")
    nodes = [c for _, c in splitserve_containers(docs) if c["args"][0] == "node"]
    assert len(nodes) == 3
    for container in nodes:
        assert ("--no-kv-checksum" in container["args"]) == (not checksum)
        assert parse(container["args"], config_env(docs, container), monkeypatch).kv_checksum is checksum
