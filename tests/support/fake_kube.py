"""A stand-in for the Kubernetes API server on loopback: pod list and watch in the real JSON shapes.

Serves `GET /api/v1/namespaces/NS/pods?labelSelector=...` (a PodList) and the same with
`watch=true` (newline-separated watch events, streamed until `timeoutSeconds` or `expire()`).
Tests change pods with `put` (ADDED or MODIFIED) and `delete`; `expire()` ends open watches
with a 410 Gone ERROR event, as the API server does when a resourceVersion is too old.
Pods are built from the chart's rendered node pod templates (tests/helm/golden).
"""

from __future__ import annotations

import copy
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

GOLDEN = Path(__file__).resolve().parents[1] / "helm" / "golden" / "values-cpu-demo.yaml"
GONE = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                    "reason": "Expired", "message": "too old resource version"}}


def chart_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(GOLDEN.read_text()) if d]


def router_selector(docs: list[dict]) -> str:
    router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-router"))
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    return next(a.split("=", 1)[1] for a in args if a.startswith("--k8s-selector="))


def node_pod(docs: list[dict], role: str, name: str, ip: str, ready: bool = True, grpc_port: int | None = None) -> dict:
    """A pod as the API returns it, from the chart's Deployment of `role` (labels, ports, env)."""
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(f"-{role}"))
    template = copy.deepcopy(deployment["spec"]["template"])
    if grpc_port is not None:
        for port in template["spec"]["containers"][0]["ports"]:
            if port["name"] == "grpc":
                port["containerPort"] = grpc_port
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": name, "namespace": "default", "uid": f"uid-{name}"},
            "spec": template["spec"], "status": pod_status(ip, ready)}


def pod_status(ip: str, ready: bool) -> dict:
    flag = "True" if ready else "False"
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": flag},
                           {"type": "ContainersReady", "status": flag}]}


def selects(selector: str, pod_labels: dict) -> bool:
    pairs = [p.split("=", 1) for p in selector.split(",") if p]
    return all(pod_labels.get(k) == v for k, v in pairs)


class FakeKubeAPI:
    def __init__(self):
        self.pods: dict[str, dict] = {}
        self.version = 1
        self.requests: list[str] = []
        self._watchers: list[queue.Queue] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def put(self, pod: dict) -> None:
        with self._lock:
            kind = "MODIFIED" if pod["metadata"]["name"] in self.pods else "ADDED"
            self._bump(pod)
            self.pods[pod["metadata"]["name"]] = pod
            self._emit({"type": kind, "object": pod})

    def delete(self, name: str, silently: bool = False) -> None:
        with self._lock:
            pod = self.pods.pop(name)
            self._bump(pod)
            if not silently:
                self._emit({"type": "DELETED", "object": pod})

    def expire(self) -> None:
        with self._lock:
            self._emit(GONE)

    def num_watchers(self) -> int:
        with self._lock:
            return len(self._watchers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            self._emit(None)

    def _bump(self, pod: dict) -> None:
        self.version += 1
        pod["metadata"]["resourceVersion"] = str(self.version)

    def _emit(self, event) -> None:
        for q in self._watchers:
            q.put(event)

    def pod_list(self, selector: str) -> dict:
        with self._lock:
            items = [p for p in self.pods.values() if selects(selector, p["metadata"].get("labels", {}))]
            return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(self.version)},
                    "items": items}

    def watch(self, selector: str):
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._watchers.append(q)
        return q

    def unwatch(self, q) -> None:
        with self._lock:
            self._watchers.remove(q)


def _handler(api: FakeKubeAPI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            api.requests.append(self.path)
            if not (url.path.startswith("/api/v1/namespaces/") and url.path.endswith("/pods")):
                return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": url.path})
            selector = query.get("labelSelector", "")
            if query.get("watch") not in ("true", "True", "1"):
                return self._send(200, api.pod_list(selector))
            self._stream(selector, float(query.get("timeoutSeconds", 30)))

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, selector: str, timeout_s: float) -> None:
            q = api.watch(selector)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                self._pump(q, selector, timeout_s)
            except OSError:
                pass  # the client went away
            finally:
                api.unwatch(q)

        def _pump(self, q, selector: str, timeout_s: float) -> None:
            while True:
                try:
                    event = q.get(timeout=timeout_s)
                except queue.Empty:
                    return
                if event is None:
                    return
                if event is GONE or selects(selector, event["object"]["metadata"].get("labels", {})):
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()
                if event is GONE:
                    return
    return Handler
