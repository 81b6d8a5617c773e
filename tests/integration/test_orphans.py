"""Services started by a local cluster stop when the process that started them is SIGKILLed
(start_new_session keeps them out of its process group, so nothing else would stop them)."""

import subprocess
import sys

import pytest

from tests.support.cluster import wait_until

pytestmark = pytest.mark.slow

PARENT = """
import sys, time
from splitserve.localcluster.procs import service_command, spawn
node = spawn("node", service_command("node", "--role", "mixed", "--model", sys.argv[1], "--port", "0",
                                     "--chunk-cache-bytes", "0"))
print(node.proc.pid, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers where PID 1 does not reap)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


def test_a_node_stops_when_the_process_that_spawned_it_is_killed(tiny_model):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_model)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert running(pid)
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not running(pid), 20), f"node {pid} outlived its parent"
    finally:
        parent.kill()
        subprocess.run(["kill", "-9", str(pid)], capture_output=True)
