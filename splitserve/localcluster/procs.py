"""Starting services as local processes and stopping them cleanly (used by `up`, tests, benchmarks).

A service prints one line `READY <kind> grpc://HOST:PORT [key=value ...]` on stdout once it
serves; `spawn` waits for that line (or the process dying, or a timeout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    url: str = ""
    extra: dict = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.url.removeprefix("grpc://")

    def alive(self) -> bool:
        return self.proc.poll() is None


def service_command(kind: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "splitserve.cli", kind, *args]


def spawn(name: str, command: list[str], timeout_s: float = 120.0, env: dict | None = None) -> Service:
    # the service stops when this process is gone, even after a SIGKILL that left no time to stop it
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SPLITSERVE_EXIT_WITH_PARENT": "1", **(env or {})}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    service = Service(name, proc)
    ready = threading.Event()
    threading.Thread(target=_pump, args=(service, ready), daemon=True).start()
    if not ready.wait(timeout_s) or not service.url:
        stop([service])
        tail = "".join(service.output[-30:])
        raise RuntimeError(f"{name} did not become ready within {timeout_s}s; its output:\n{tail}")
    return service


def _pump(service: Service, ready: threading.Event) -> None:
    for line in service.proc.stdout:
        service.output.append(line)
        del service.output[:-500]
        if line.startswith("READY ") and not ready.is_set():
            parts = line.split()
            service.url = parts[2]
            service.extra = dict(p.split("=", 1) for p in parts[3:] if "=" in p)
            ready.set()
    ready.set()  # the process ended: stop waiting


def stop(services: list[Service], grace_s: float = 10.0) -> None:
    """SIGTERM (graceful drain), then SIGKILL whatever is left after grace_s."""
    for s in services:
        _signal(s, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for s in services:
        try:
            s.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(s, signal.SIGKILL)
            s.proc.wait()


def kill(service: Service, sig: int = signal.SIGKILL) -> None:
    _signal(service, sig)
    if sig == signal.SIGKILL:
        service.proc.wait()


def _signal(service: Service, sig: int) -> None:
    if service.proc.poll() is None:
        try:
            os.killpg(service.proc.pid, sig)
        except ProcessLookupError:
            pass
