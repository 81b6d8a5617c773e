"""LocalCluster: a router and its nodes as local processes (for `splitserve up`, tests and benchmarks)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from splitserve import labels
from splitserve.localcluster.procs import Service, service_command, spawn, stop
from splitserve.runtime.cpu_share import share_file


def model_or_demo(model: str | None, preset: str = "small") -> Path:
    """The given model folder or .gguf file, else the preset's folder (made or prepared once, then cached)."""
    if model:
        return Path(model)
    from splitserve.modelgen.cache import ensure_model

    return ensure_model(preset)


class LocalCluster:
    def __init__(self, model: Path, prefill: int = 1, decode: int = 1, colocated: int = 0, transport: str = "torch",
                 host: str = "127.0.0.1", port: int = 0, http_port: int = 0, threads: int = 1,
                 policy: str = "least_loaded", node_args: list[str] = (), router_args: list[str] = (),
                 redis_url: str | None = None, private_redis: bool = False, ready_timeout_s: float = 120.0,
                 devices: list[str] = (), share_cores: bool = False, prefix_store: bool = False):
        if colocated == 0 and (prefill == 0 or decode == 0):
            raise ValueError("need at least one prefill and one decode node, or a colocated node")
        self.model, self.transport, self.host = Path(model), transport, host
        self.port, self.http_port, self.threads, self.policy = port, http_port, threads, policy
        self.counts = {labels.ROLE_PREFILL: prefill, labels.ROLE_DECODE: decode, labels.ROLE_MIXED: colocated}
        self.node_args, self.router_args = list(node_args), list(router_args)
        self.nodes: list[tuple[str, Service]] = []
        self.router: Service | None = None
        # chunk-cache Redis: a given URL, else a private redis-server when asked (None if none is installed)
        self.redis_url, self.private_redis, self.redis = redis_url, private_redis, None
        self.prefix_store = prefix_store  # the nodes share prompt blocks through that Redis too
        self.ready_timeout_s = ready_timeout_s  # per process: how long to wait for its READY line
        self.devices = list(devices)  # node k (in start order) gets --device devices[k]; empty: the nodes' default
        self.node_devices: dict[str, str] = {}  # node name -> its device, kept across restarts
        # share_cores: `threads` are the host's cores, which the nodes share by how many are stepping
        self.share_file = share_file(Path(tempfile.mkdtemp(prefix="splitserve-cpu-"))) if share_cores else None
        self.share_slots: dict[str, int] = {}  # node name -> its slot in the share file, kept across restarts

    @property
    def url(self) -> str:
        return self.router.url if self.router else ""

    @property
    def http_url(self) -> str:
        """The router's OpenAI HTTP base URL (http_port -1: a free port; 0: off, empty)."""
        return self.router.extra.get("http", "") if self.router else ""

    def node_command(self, role: str, port: int = 0, device: str | None = None, name: str = "") -> list[str]:
        device_args = ["--device", device] if device else []
        return service_command("node", "--role", role, "--model", str(self.model), "--host", self.host, "--port", str(port),
                               "--kv-port", "0", "--transport", self.transport, "--threads", str(self.threads),
                               *device_args, *self.share_args(name), *self.node_args)

    def share_args(self, name: str) -> list[str]:
        """`--cpu-share FILE:SLOT` for the node `name` when the nodes share the host's cores."""
        if self.share_file is None:
            return []
        slot = self.share_slots.setdefault(name, len(self.share_slots))
        return ["--cpu-share", f"{self.share_file}:{slot}"]

    def start(self, log=lambda line: None) -> None:
        try:
            self._start_redis(log)
            self._start_nodes(log)
            self.router = self.start_router(self.port, self.http_port)
            log(f"router  {self.router.url}  nodes: {self.node_list}")
        except BaseException:
            self.stop()
            raise

    @property
    def node_list(self) -> str:
        """The nodes as the router's --nodes flag lists them."""
        return ",".join(f"{role}={s.address}" for role, s in self.nodes)

    def start_router(self, port: int = 0, http_port: int = -1) -> Service:
        """A router over this cluster's nodes, with its flags (the cluster's own, or one more replica the
        caller stops)."""
        command = service_command("router", "--model", str(self.model), "--host", self.host, "--port", str(port),
                                  "--http-port", str(http_port), "--nodes", self.node_list, "--policy", self.policy,
                                  *self.router_args)
        return spawn("router", command, self.ready_timeout_s)

    def _start_redis(self, log) -> None:
        if self.redis_url is None and self.private_redis:
            from splitserve.localcluster.redis_server import start_private_redis

            self.redis = start_private_redis()
            self.redis_url = self.redis.url if self.redis else None
            log(f"redis   {self.redis_url} (private)" if self.redis else
                "redis   none: redis-server is not installed, the chunk cache runs with its local tier only")
        if self.redis_url:
            self.node_args += ["--redis-url", self.redis_url]
        if self.redis_url and self.prefix_store:
            self.node_args += ["--prefix-store-url", self.redis_url]
            log(f"prefix store on {self.redis_url}: the nodes share prompt blocks")
        elif self.prefix_store:
            log("prefix store off: no Redis (give --redis-url, or install redis-server)")

    def _start_nodes(self, log) -> None:
        for role, count in self.counts.items():
            for _ in range(count):
                self.start_node(role, log)

    def start_node(self, role: str, log=lambda line: None) -> Service:
        name = f"{role}-{sum(1 for r, _ in self.nodes if r == role)}"
        service = spawn(name, self.node_command(role, device=self.assign_device(name), name=name), self.ready_timeout_s)
        self.nodes.append((role, service))
        log(f"{name:10}{service.url}")
        return service

    def assign_device(self, name: str) -> str | None:
        """The device of the node about to start (`devices` in turn, in start order), kept for its restarts."""
        if self.devices and name not in self.node_devices:
            self.node_devices[name] = self.devices[len(self.node_devices) % len(self.devices)]
        return self.node_devices.get(name)

    def restart_node(self, service: Service) -> Service:
        """Starts a dead node again on its gRPC port (the router knows nodes by address) and
        puts the new process in its place."""
        index = next(i for i, (_, s) in enumerate(self.nodes) if s is service)
        if service.alive():
            raise ValueError(f"{service.name} is still running: kill it first")
        role = self.nodes[index][0]
        port = int(service.address.rsplit(":", 1)[1])
        fresh = spawn(service.name, self.node_command(role, port, self.node_devices.get(service.name), service.name),
                      self.ready_timeout_s)
        self.nodes[index] = (role, fresh)
        return fresh

    def services(self) -> list[Service]:
        return ([self.router] if self.router else []) + [s for _, s in self.nodes]

    def stop(self) -> None:
        stop(self.services())
        if self.redis is not None:
            self.redis.stop()
        if self.share_file is not None:
            shutil.rmtree(Path(self.share_file).parent, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
