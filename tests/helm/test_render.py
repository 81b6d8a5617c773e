"""The chart renders with Helm's engine for the defaults and every example; every manifest is a
valid Kubernetes object; the objects fit together (selectors, ports, references); the examples
equal their golden files."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CRD_KINDS,
    EXAMPLES,
    KUBE_VERSION,
    VALUES_FILES,
    goldens,
    manifests,
    of_kind,
    pod_specs,
    render_error,
    rendered,
    splitserve_containers,
    values_of,
)


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pods(docs):
    return [template for _, template in pod_specs(docs)]


def _containers(template):
    return template["spec"].get("initContainers", []) + template["spec"]["containers"]


def _port_names(template) -> set[str]:
    return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_manifest_is_a_valid_kubernetes_object(name):
    docs = manifests(name)
    assert len(docs) > 10
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {where} at {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("name", VALUES_FILES)
def test_selectors_select_the_chart_pods(name):
    docs = manifests(name)
    pods = [t["metadata"]["labels"] for t in _pods(docs)]
    for workload, template in pod_specs(docs):
        assert _selects(workload["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    selectors = [d["spec"]["selector"] for d in of_kind(docs, "Service")]
    selectors += [d["spec"]["selector"]["matchLabels"] for d in of_kind(docs, "PodDisruptionBudget")]
    selectors += [d["spec"]["podSelector"]["matchLabels"] for d in of_kind(docs, "NetworkPolicy")]
    for selector in selectors:
        assert any(_selects(selector, labels) for labels in pods), selector
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments


@pytest.mark.parametrize("name", VALUES_FILES)
def test_named_ports_exist_on_the_selected_pods(name):
    docs = manifests(name)
    pods = _pods(docs)
    for service in of_kind(docs, "Service"):
        names = set.union(*[_port_names(t) for t in pods if _selects(service["spec"]["selector"], t["metadata"]["labels"])])
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names, service["metadata"]["name"]
    for policy in of_kind(docs, "NetworkPolicy"):
        selected = [t for t in pods if _selects(policy["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"])]
        used = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
        assert all(used <= _port_names(t) for t in selected), policy["metadata"]["name"]
    for template in pods:
        for container in template["spec"]["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                handler = container.get(probe, {})
                port = (handler.get("tcpSocket") or handler.get("httpGet") or {}).get("port")
                assert port is None or port in _port_names(template)


@pytest.mark.parametrize("name", VALUES_FILES)
def test_config_maps_secrets_and_service_accounts_resolve(name):
    docs = manifests(name)
    config_maps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")} | _existing_secrets(name)
    for template in _pods(docs):
        spec = template["spec"]
        assert spec.get("serviceAccountName", "default") in accounts | {"default"}
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
        for container in _containers(template):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] in secrets


def _existing_secrets(name: str) -> set[str]:
    """Secrets an example names as already in the cluster."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("existingSecret", "secretName", "caSecret") and isinstance(value, str):
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(values_of(name))
    return found


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_pod_runs_non_root_with_a_locked_down_container(name):
    for template in _pods(manifests(name)):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for container in _containers(template):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("name", VALUES_FILES)
def test_network_policies_let_only_the_router_reach_nodes_and_only_nodes_reach_redis(name):
    docs = manifests(name)
    policies = {d["metadata"]["name"].rsplit("-", 1)[1]: d["spec"] for d in of_kind(docs, "NetworkPolicy")}
    component = "app.kubernetes.io/component"
    sources = [
        (peer["podSelector"]["matchLabels"][component], {p["port"] for p in rule.get("ports", [])})
        for rule in policies["node"]["ingress"]
        for peer in rule.get("from", [])
        if "podSelector" in peer
    ]
    assert sorted(sources, key=str) == [("node", set()), ("router", {"grpc"})]
    other_rules = [rule for rule in policies["node"]["ingress"] if not any("podSelector" in p for p in rule.get("from", []))]
    assert [rule["ports"] for rule in other_rules] == [[{"port": "metrics"}]]
    if "redis" in policies:
        [rule] = policies["redis"]["ingress"]
        assert [p["podSelector"]["matchLabels"][component] for p in rule["from"]] == ["node"]


def test_service_monitors_scrape_named_ports_of_the_chart_services():
    docs = manifests("values-gpu-splitwise.yaml")
    monitors = of_kind(docs, "ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        services = [s for s in of_kind(docs, "Service") if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert services
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)


def test_gpu_example_requests_gpus_and_sets_nccl():
    docs = manifests("values-gpu-splitwise.yaml")
    nodes = {w["metadata"]["name"].rsplit("-", 1)[1]: c for w, c in splitserve_containers(docs) if c["name"] == "node"}
    assert set(nodes) == {"prefill", "decode", "mixed"}
    for container in nodes.values():
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert env["NCCL_MAX_NCHANNELS"] == "8"
        assert container["image"].endswith(":0.1.0-cuda")
    decode = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-decode"))
    assert "replicas" not in decode["spec"]  # the HPA owns it
    router = next(c for _, c in splitserve_containers(docs) if c["name"] == "router")
    assert router["image"].endswith(":0.1.0-cpu")


def test_tls_replaces_grpc_probes_that_kubelet_cannot_run_over_tls():
    plain = {c["name"]: c for _, c in splitserve_containers(manifests("default"))}
    assert plain["router"]["readinessProbe"]["grpc"]["port"] == 50050
    assert plain["node"]["readinessProbe"]["grpc"]["port"] == 50051
    secure = {c["name"]: c for _, c in splitserve_containers(manifests("values-external-redis-tls.yaml"))}
    assert secure["router"]["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
    assert secure["node"]["readinessProbe"]["tcpSocket"] == {"port": "grpc"}


def test_redis_password_stays_out_of_pod_specs():
    text = goldens.manifests_text(rendered("values-cpu-demo.yaml"))
    workloads = [d for d in text.split("\n---\n") if "kind: Deployment" in d or "kind: StatefulSet" in d]
    assert workloads and not any("demo-only-password" in w for w in workloads)


@pytest.mark.parametrize("name", VALUES_FILES)
def test_notes_tell_how_to_reach_the_router(name):
    notes = rendered(name)["splitserve/templates/NOTES.txt"]
    assert "llm-splitserve-router" in notes and "/v1/models" in notes


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_renders_equal_their_golden_files(name):
    golden = goldens.golden_path(EXAMPLES[name])
    assert golden.exists(), f"missing {golden}: run `make helm-goldens`"
    assert goldens.manifests_text(rendered(name)) == golden.read_text(), f"{golden.name} is stale: run `make helm-goldens`"


def test_the_grafana_dashboard_is_current_and_ships_in_a_configmap():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_dashboard", goldens.ROOT / "scripts" / "render_dashboard.py")
    dashboard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboard)
    assert dashboard.OUT.read_text() == dashboard.rendered(), "the dashboard is stale: run `make helm-goldens`"
    values = {"grafanaDashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "LLM"}}}
    docs = [d for s, t in goldens.render(values).items() if not s.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    [config] = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "llm-splitserve-dashboard"]
    kubernetes_validate.validate(config, KUBE_VERSION, strict=True)
    assert config["metadata"]["namespace"] == "monitoring" and config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert json.loads(config["data"]["splitserve.json"]) == dashboard.dashboard()
    default = [d for s, t in goldens.render({}).items() if not s.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    assert not [d for d in of_kind(default, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def test_readme_values_table_is_current():
    text = goldens.README.read_text()
    table = goldens.values_table(goldens.VALUES.read_text())
    assert goldens.readme_with_table(text, table) == text, "README values table is stale: run `make helm-goldens`"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"decode": {"enabled": False}}, "prefill.enabled needs decode.enabled or mixed.enabled"),
        ({"prefill": {"enabled": False}, "decode": {"enabled": False}}, "enable at least one node pool"),
        ({"model": {"source": "pvc"}}, "model.source is pvc: set model.pvc.claimName"),
        ({"redis": {"mode": "external"}}, "redis.mode is external: set redis.external.host"),
        ({"router": {"tls": {"enabled": True}}}, "router.tls.enabled: set router.tls.secretName"),
        ({"router": {"responsesStore": "redis"}, "redis": {"mode": "disabled"}},
         "router.responsesStore is redis: set redis.mode"),
        ({"router": {"batchStore": "redis"}, "redis": {"mode": "disabled"}},
         "router.batchStore is redis: set redis.mode"),
        ({"router": {"allowRuntimeLora": True, "loraStore": "redis"}, "redis": {"mode": "disabled"}},
         "router.loraStore is redis: set redis.mode"),
        ({"node": {"tls": {"enabled": True, "secretName": "n"}}}, "node.tls.enabled needs router.tls.enabled"),
        ({"router": {"apiKeys": {"enabled": True}}}, "router.apiKeys.enabled: set router.apiKeys.existingSecret"),
        ({"router": {"cacheSaltPerKey": True}}, "router.cacheSaltPerKey needs router.apiKeys.enabled"),
    ],
)
def test_chart_refuses_values_that_cannot_serve(values, message):
    assert message in render_error(values)


@pytest.mark.parametrize("name", VALUES_FILES)
def test_helm_lint_in_strict_mode_finds_nothing_to_fix(name):
    import helm_python

    report = helm_python.lint(goldens.CHART_DIR, values_of(name) or None, strict=True, namespace=goldens.NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 2: warning, 3: error


VARIANTS = {
    "redis-without-auth": {"redis": {"auth": {"enabled": False}}},
    "redis-disabled": {"redis": {"mode": "disabled"}},
    "mixed-only": {"prefill": {"enabled": False}, "decode": {"enabled": False}, "mixed": {"enabled": True}},
    "model-from-pvc-subpath": {"model": {"source": "pvc", "pvc": {"claimName": "models", "subPath": "llama"}}},
    "model-copied-from-image": {"model": {"image": {"repository": "models/llama", "tag": "v1"}}},
    "api-keys-in-chart": {"router": {"apiKeys": {"enabled": True, "keys": ["k1", "k2"]}, "cacheSaltPerKey": True}},
    "everything-off": {"networkPolicy": {"enabled": False}, "rbac": {"create": False},
                       "router": {"pdb": {"enabled": False}, "serviceAccount": {"create": False, "name": "sa"}}},
    "responses-in-redis": {"router": {"responsesStore": "redis"}},
    "batches-in-redis": {"router": {"batchStore": "redis", "batch": {"claimSeconds": 7.5}}},
    "responses-in-external-redis-tls": {"router": {"responsesStore": "redis"}, "redis": {
        "mode": "external", "auth": {"existingSecret": "r"},
        "external": {"host": "redis.example", "tls": {"enabled": True, "caSecret": "redis-ca"}}}},
    "batches-in-external-state-redis": {"router": {"batchStore": "redis"}, "redis": {
        "mode": "external", "auth": {"existingSecret": "r"}, "external": {"host": "kv.example", "state": {"host": "state.example", "port": 6380}}}},
    "percent-budgets-and-pull-secrets": {"decode": {"pdb": {"minAvailable": "50%"}},
                                         "imagePullSecrets": ["a", {"name": "b"}]},
}


def check_router_state_redis(variant: str, docs: list[dict], node_urls: set[str]) -> None:
    """The router's stores name a Redis that never evicts (the in-chart one of its state, reached by the router
    alone) or the external one the values name; the nodes' KV values stay on the other; password from env."""
    [router] = [c for _, c in splitserve_containers(docs) if c["args"][0] == "router"]
    flag = "--batch-store=" if variant.startswith("batches") else "--responses-store="
    [store] = [a.removeprefix(flag) for a in router["args"] if a.startswith(flag)]
    assert ("--batch-claim-s=7.5" in router["args"]) == (variant == "batches-in-redis")
    assert "REDIS_PASSWORD" in [e["name"] for e in router["env"]]
    assert ("redis-tls" in [m["name"] for m in router["volumeMounts"]]) == variant.endswith("tls")
    if variant.endswith("tls"):  # external, no state host: the same Redis as the nodes'
        assert {store} == node_urls and "$(REDIS_PASSWORD)" in store
        return
    if variant.endswith("external-state-redis"):
        assert store == "redis://:$(REDIS_PASSWORD)@state.example:6380/0"
        assert node_urls == {"redis://:$(REDIS_PASSWORD)@kv.example:6379/0"}
        return
    assert store == "redis://:$(REDIS_PASSWORD)@llm-splitserve-redis-state:6379/0"
    assert node_urls == {"redis://:$(REDIS_PASSWORD)@llm-splitserve-redis:6379/0"}
    redis_args = {s["metadata"]["name"]: s["spec"]["template"]["spec"]["containers"][0]["args"]
                  for s in of_kind(docs, "StatefulSet")}
    policy = {name: args[args.index("--maxmemory-policy") + 1] for name, args in redis_args.items()}
    assert policy == {"llm-splitserve-redis": "allkeys-lru", "llm-splitserve-redis-state": "noeviction"}
    assert {s["metadata"]["name"] for s in of_kind(docs, "Service")} >= {"llm-splitserve-redis-state"}
    component = "app.kubernetes.io/component"
    clients = {d["metadata"]["name"]: [p["podSelector"]["matchLabels"][component] for p in d["spec"]["ingress"][0]["from"]]
               for d in of_kind(docs, "NetworkPolicy") if "-redis" in d["metadata"]["name"]}
    assert clients == {"llm-splitserve-redis": ["node"], "llm-splitserve-redis-state": ["router"]}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_value_variants_render_valid_objects(variant):
    rendered_files = goldens.render(VARIANTS[variant])
    docs = [d for s, t in rendered_files.items() if not s.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    args = [a for _, c in splitserve_containers(docs) for a in c["args"]]
    urls = [a for a in args if a.startswith("--redis-url=")]
    if variant == "redis-without-auth":
        assert set(urls) == {"--redis-url=redis://llm-splitserve-redis:6379/0"}
    if variant == "redis-disabled":
        assert urls == [] and of_kind(docs, "StatefulSet") == []
    if variant == "model-copied-from-image":
        for deployment in of_kind(docs, "Deployment"):
            [init] = deployment["spec"]["template"]["spec"]["initContainers"]
            assert init["command"] == ["cp", "-R", "/models/.", init["volumeMounts"][0]["mountPath"]]
            assert init["volumeMounts"][0]["mountPath"] != "/models"
    if variant.startswith(("responses-in", "batches-in")):
        check_router_state_redis(variant, docs, {u.removeprefix("--redis-url=") for u in urls})
    if variant == "api-keys-in-chart":
        [secret] = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"].endswith("-api-keys")]
        assert secret["stringData"]["api-keys"] == "k1\nk2\n"
        assert "--api-keys-file=/etc/splitserve/api-keys/api-keys" in args and "--cache-salt-per-key" in args
