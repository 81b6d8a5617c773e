"""Node discovery: static lists, a YAML file, and Kubernetes pods through a fake API server on loopback."""

import asyncio

import pytest

from router.cluster.discovery import KubernetesDiscovery, load_nodes_file, pod_endpoint, static_nodes
from router.cluster.nodes import NodeRegistry
from tests.support.fake_kube import FakeKubeAPI, chart_docs, node_pod, pod_status, router_selector


def test_nodes_file_and_flag_combine(tmp_path):
    path = tmp_path / "nodes.yaml"
    path.write_text("nodes:\n  - {role: prefill, address: 'a:1'}\n  - role: decode\n    address: b:2\n")
    assert load_nodes_file(path) == [("prefill", "a:1"), ("decode", "b:2")]
    assert static_nodes("mixed=c:3", str(path)) == [("mixed", "c:3"), ("prefill", "a:1"), ("decode", "b:2")]


@pytest.mark.parametrize("text, message", [("- a\n", "nodes:"), ("nodes:\n  - {role: gpu, address: 'a:1'}\n", "ROLE")])
def test_bad_nodes_files_say_what_is_expected(tmp_path, text, message):
    path = tmp_path / "nodes.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_nodes_file(path)


async def until(predicate, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def roles(registry: NodeRegistry) -> dict[str, str]:
    return {n.address: n.role for n in registry.snapshot()}


async def _kubernetes_scenario():
    from kubernetes.aio import client

    docs = chart_docs()
    api = FakeKubeAPI()
    api.put(node_pod(docs, "prefill", "llm-prefill-a", "10.0.0.1"))
    api.put(node_pod(docs, "decode", "llm-decode-a", "10.0.0.2"))
    api.put(node_pod(docs, "decode", "llm-decode-b", "10.0.0.3", ready=False))
    router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-router"))
    api.put({"apiVersion": "v1", "kind": "Pod", "metadata": {**router["spec"]["template"]["metadata"], "name": "llm-router"},
             "spec": router["spec"]["template"]["spec"], "status": pod_status("10.0.0.9", True)})
    registry = NodeRegistry()
    discovery = KubernetesDiscovery(registry, "default", router_selector(docs),
                                    client.ApiClient(client.Configuration(host=api.url)), watch_timeout_s=30)
    task = asyncio.create_task(discovery.run())
    try:
        await asyncio.wait_for(discovery.synced.wait(), 10)
        assert roles(registry) == {"10.0.0.1:50051": "prefill", "10.0.0.2:50051": "decode"}
        await until(lambda: api.num_watchers() == 1)

        ready = node_pod(docs, "decode", "llm-decode-b", "10.0.0.3")
        api.put(ready)  # made ready
        await until(lambda: "10.0.0.3:50051" in roles(registry))
        api.put(node_pod(docs, "prefill", "llm-prefill-a", "10.0.0.1", ready=False))  # made unready
        await until(lambda: "10.0.0.1:50051" not in roles(registry))
        api.delete("llm-decode-a")
        await until(lambda: "10.0.0.2:50051" not in roles(registry))
        api.put(node_pod(docs, "prefill", "llm-prefill-b", "10.0.0.4"))  # added
        await until(lambda: roles(registry).get("10.0.0.4:50051") == "prefill")

        api.delete("llm-decode-b", silently=True)  # missed while the watch expires: the relist finds it
        api.expire()
        await until(lambda: "10.0.0.3:50051" not in roles(registry))
        await until(lambda: api.num_watchers() == 1)
        api.put(node_pod(docs, "decode", "llm-decode-c", "10.0.0.5"))
        await until(lambda: roles(registry) == {"10.0.0.4:50051": "prefill", "10.0.0.5:50051": "decode"})
        assert all("labelSelector=" in r for r in api.requests)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await registry.close()
        api.close()


def test_kubernetes_pods_added_made_unready_deleted_and_relisted_after_410():
    asyncio.run(_kubernetes_scenario())


def test_a_pod_without_a_grpc_port_or_a_role_is_not_a_node():
    from kubernetes.aio.client import V1Pod

    docs = chart_docs()
    assert pod_endpoint(V1Pod.from_dict(node_pod(docs, "decode", "d", "fd00::5"))) == ("decode", "[fd00::5]:50051")
    unnamed = node_pod(docs, "decode", "d", "10.0.0.1")
    for port in unnamed["spec"]["containers"][0]["ports"]:
        port["name"] = "other-" + port["name"]
    assert pod_endpoint(V1Pod.from_dict(unnamed)) is None
    no_role = node_pod(docs, "decode", "d", "10.0.0.1")
    del no_role["metadata"]["labels"]["splitserve.io/role"]
    assert pod_endpoint(V1Pod.from_dict(no_role)) is None
