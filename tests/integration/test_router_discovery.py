"""A real router discovering real nodes through a fake Kubernetes API, and health-checking them.

The router process reads a kubeconfig that points at tests/support/fake_kube.py's loopback
server; pods are the chart's rendered node pods with the real nodes' IP and port. Pods are
added, made unready and deleted; a node paused with SIGSTOP leaves the routing set through
failed gRPC health checks and comes back after SIGCONT.
"""

import signal

import grpc
import pytest

from splitserve.client import Client
from splitserve.localcluster.cluster import LocalCluster
from splitserve.localcluster.procs import service_command, spawn, stop
from tests.support.cluster import start_nodes_at_once, wait_until
from tests.support.fake_kube import FakeKubeAPI, chart_docs, node_pod, router_selector
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.slow
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "%s"}}]
users: [{name: test, user: {token: test-token}}]
contexts: [{name: test, context: {cluster: fake, user: test, namespace: default}}]
current-context: test
"""


@pytest.fixture
def world(tiny_model, tmp_path):
    api, docs = FakeKubeAPI(), chart_docs()
    local = LocalCluster(tiny_model, prefill=1, decode=2, node_args=["--transfer-timeout-s=10"])
    services = []
    try:
        names_roles = [("prefill-a", "prefill"), ("decode-a", "decode"), ("decode-b", "decode")]
        nodes = dict(zip([name for name, _ in names_roles], start_nodes_at_once(local, names_roles)))
        services += nodes.values()
        (tmp_path / "kubeconfig").write_text(KUBECONFIG % api.url)
        pods = {name: (lambda ready=True, name=name, node=node: node_pod(
            docs, name.split("-")[0], name, "127.0.0.1", ready, grpc_port=int(node.address.rsplit(":", 1)[1])))
            for name, node in nodes.items()}
        api.put(pods["prefill-a"]())
        api.put(pods["decode-a"]())
        router = spawn("router", service_command(
            "router", "--model", str(tiny_model), "--port", "0", "--http-port", "-1", "--policy", "round_robin",
            "--discovery", "kubernetes", "--k8s-namespace", "default", "--k8s-selector", router_selector(docs),
            "--health-interval-s", "0.2", "--health-timeout-s", "0.3"),
            env={"KUBECONFIG": str(tmp_path / "kubeconfig"), "KUBERNETES_SERVICE_HOST": ""})
        services.append(router)
        yield api, router, nodes, pods
    finally:
        for service in services:
            if service.alive():
                service.proc.send_signal(signal.SIGCONT)
        stop(services)
        api.close()


def healthy(router, node, role: str) -> float | None:
    """The router's node_healthy gauge for node (None: the router does not know the node)."""
    samples = [s for s in scrape(router.extra["http"] + "/metrics") if s[0] == "splitserve_router_node_healthy"]
    found = [v for _, labels, v in samples if labels["node"] == node.address and labels["role"] == role]
    return found[0] if found else None


def decode_nodes_used(router, n: int) -> set[str]:
    with Client(router.url, timeout_s=30) as client:
        return {client.complete(prompt_token_ids=[5, 6, 7, 8], max_tokens=3, ignore_eos=True).final.decode_node
                for _ in range(n)}


def test_pods_come_and_go_and_health_checks_pause_and_readmit_nodes(world):
    api, router, nodes, pods = world
    a, b = nodes["decode-a"], nodes["decode-b"]
    assert wait_until(lambda: healthy(router, a, "decode") == 1 and healthy(router, nodes["prefill-a"], "prefill") == 1, 10)
    assert decode_nodes_used(router, 2) == {a.address}

    api.put(pods["decode-b"]())  # a pod added
    assert wait_until(lambda: healthy(router, b, "decode") == 1, 10)
    assert decode_nodes_used(router, 4) == {a.address, b.address}

    b.proc.send_signal(signal.SIGSTOP)  # paused: health checks time out
    assert wait_until(lambda: healthy(router, b, "decode") == 0, 10)
    assert decode_nodes_used(router, 4) == {a.address}
    b.proc.send_signal(signal.SIGCONT)  # resumed: re-admitted
    assert wait_until(lambda: healthy(router, b, "decode") == 1, 10)
    assert decode_nodes_used(router, 4) == {a.address, b.address}

    api.put(pods["decode-a"](ready=False))  # made unready: out of the registry
    assert wait_until(lambda: healthy(router, a, "decode") is None, 10)
    assert decode_nodes_used(router, 3) == {b.address}

    api.delete("prefill-a")  # deleted: no prefill node left
    assert wait_until(lambda: healthy(router, nodes["prefill-a"], "prefill") is None, 10)
    with Client(router.url, timeout_s=30) as client, pytest.raises(grpc.RpcError) as err:
        client.complete(prompt="x", max_tokens=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
