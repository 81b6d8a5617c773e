"""Where the nodes are: a static list (`--nodes`, `--nodes-file`) or Kubernetes pods.

Kubernetes discovery lists the pods matching `--k8s-selector` in `--k8s-namespace`, then
watches them from the list's resourceVersion (a watch that ends is resumed from the last
version seen; 410 Gone means relist). A pod is a node while it is Ready, has an IP, is not
being deleted and carries a known role in its `splitserve.io/role` label; its address is the
pod IP and the container port named `grpc` (what the Helm chart renders). Pods that stop being
nodes leave the registry; the registry's health checks still decide who gets requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import yaml

from splitserve import labels
from router.cluster.nodes import NodeRegistry, parse_static_nodes

log = logging.getLogger(__name__)
GRPC_PORT_NAME = "grpc"
RETRY_S = 1.0


def load_nodes_file(path: str | Path) -> list[tuple[str, str]]:
    """YAML `nodes: [{role: prefill, address: HOST:PORT}, ...]` -> [(role, address)]."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    entries = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{path}: expected `nodes:` with a list of {{role: ..., address: HOST:PORT}}")
    return parse_static_nodes(",".join(f"{e.get('role')}={e.get('address')}" for e in entries))


def static_nodes(spec: str = "", nodes_file: str | None = None) -> list[tuple[str, str]]:
    return parse_static_nodes(spec) + (load_nodes_file(nodes_file) if nodes_file else [])


def pod_endpoint(pod) -> tuple[str, str] | None:
    """(role, 'ip:port') of a pod that serves as a node now, else None. pod: kubernetes V1Pod."""
    meta, status = pod.metadata, pod.status
    role = (meta.labels or {}).get(labels.ROLE_LABEL)
    if role not in labels.NODE_ROLES or meta.deletion_timestamp or status is None or not status.pod_ip:
        return None
    if not any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
        return None
    port = next((p.container_port for c in pod.spec.containers for p in c.ports or [] if p.name == GRPC_PORT_NAME), None)
    if port is None:
        return None
    host = f"[{status.pod_ip}]" if ":" in status.pod_ip else status.pod_ip
    return role, f"{host}:{port}"


class KubernetesDiscovery:
    """Keeps the registry equal to the ready node pods; `run()` until cancelled."""

    def __init__(self, registry: NodeRegistry, namespace: str, selector: str, api_client=None,
                 watch_timeout_s: int = 300):
        self.registry = registry
        self.namespace, self.selector = namespace, selector
        self.api_client = api_client  # None: in-cluster config, else the kubeconfig
        self.watch_timeout_s = watch_timeout_s
        self._pods: dict[str, tuple[str, str]] = {}  # pod name -> (role, address)
        self.synced = asyncio.Event()  # set after the first list

    async def run(self) -> None:
        from kubernetes.aio import client

        api = client.CoreV1Api(self.api_client or await _default_api_client())
        try:
            while True:
                try:
                    await self._watch(api, await self._list(api))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - API down, bad replies, 410 Gone: relist
                    gone = getattr(exc, "status", None) == 410  # our version is too old: relist at once
                    log.warning("kubernetes discovery: %s; relisting", _brief(exc))
                    await asyncio.sleep(0 if gone else RETRY_S)
        finally:
            await api.api_client.close()

    async def _list(self, api) -> str:
        pods = await api.list_namespaced_pod(self.namespace, label_selector=self.selector)
        seen = {p.metadata.name for p in pods.items}
        for name in [n for n in self._pods if n not in seen]:
            await self._apply(name, None)
        for pod in pods.items:
            await self._apply(pod.metadata.name, pod_endpoint(pod))
        self.synced.set()
        return pods.metadata.resource_version

    async def _watch(self, api, version: str) -> None:
        from kubernetes.aio import watch

        while True:
            async with watch.Watch() as w:
                stream = w.stream(api.list_namespaced_pod, self.namespace, label_selector=self.selector,
                                  resource_version=version, timeout_seconds=self.watch_timeout_s,
                                  allow_watch_bookmarks=True)
                async for event in stream:
                    await self._on_event(event)
                version = w.resource_version or version

    async def _on_event(self, event: dict) -> None:
        kind, pod = event["type"], event["object"]
        if kind in ("ADDED", "MODIFIED"):
            await self._apply(pod.metadata.name, pod_endpoint(pod))
        elif kind == "DELETED":
            await self._apply(pod.metadata.name, None)

    async def _apply(self, name: str, endpoint: tuple[str, str] | None) -> None:
        old = self._pods.get(name)
        if old == endpoint:
            return
        if old is not None:
            del self._pods[name]
            if old[1] not in {address for _, address in self._pods.values()}:
                await self.registry.remove(old[1])
        if endpoint is not None:
            self._pods[name] = endpoint
            self.registry.add(*endpoint)
        log.info("pod %s", "is a node" if endpoint else "is not a node", extra={"pod": name, "node": (endpoint or old)[1]})


async def _default_api_client():
    from kubernetes.aio import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        await config.load_config()
    return client.ApiClient()


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"


async def start_discovery(kind: str, registry: NodeRegistry, namespace: str, selector: str,
                          sync_timeout_s: float = 10.0) -> asyncio.Task | None:
    """Starts Kubernetes discovery (kind 'kubernetes') and waits for its first list; None for 'static'."""
    if kind == "static":
        return None
    if kind != "kubernetes":
        raise ValueError(f"discovery must be static or kubernetes, got {kind!r}")
    discovery = KubernetesDiscovery(registry, namespace, selector)
    task = asyncio.get_running_loop().create_task(discovery.run())
    try:
        await asyncio.wait_for(asyncio.shield(discovery.synced.wait()), sync_timeout_s)
    except asyncio.TimeoutError:
        log.warning("kubernetes discovery: no pod list within %.0fs; serving while it retries", sync_timeout_s)
    return task
