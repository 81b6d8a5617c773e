"""Where `splitserve profile --configmap NAME` puts the profile: one key of an existing ConfigMap,
written through the Kubernetes API (in-cluster: the pod's ServiceAccount, which the Helm chart
allows to get and patch that one ConfigMap and nothing else; outside: the kubeconfig)."""

from __future__ import annotations

import os
from pathlib import Path

PROFILE_KEY = "profile.json"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MAX_CONFIGMAP_BYTES = 1 << 20  # the API server's limit on a ConfigMap


def pod_namespace() -> str | None:
    """The pod's own namespace (in-cluster), or None."""
    return NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else None


def write_configmap(name: str, namespace: str, text: str, key: str = PROFILE_KEY, api=None) -> None:
    """Set `key` of ConfigMap namespace/name to text (a merge patch: its other keys stay)."""
    if len(text.encode()) > MAX_CONFIGMAP_BYTES - 4096:
        raise ValueError(f"the profile is {len(text.encode())} bytes: too large for a ConfigMap (1 MiB)")
    if api is None:
        api = _core_api()
    api.patch_namespaced_config_map(name, namespace, {"data": {key: text}})


def _core_api():
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    return client.CoreV1Api()
