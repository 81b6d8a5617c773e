"""A dead peer never hangs a node: killing either side of a KV transfer midway.

Prefill nodes here sleep before each layer send (--fault-kv-send-delay-s) so that a transfer
lasts long enough to kill a process in the middle of it.
"""

import threading
import time

import grpc
import pytest

from splitserve.api.v1 import common_pb2, node_pb2
from splitserve.client import Client
from splitserve.localcluster.procs import kill
from tests.support.cluster import ParallelCluster, node_stats, node_stub, used_blocks_settle_to_zero, wait_until

pytestmark = pytest.mark.slow
TIMEOUT_S = 3.0
SLOW_SEND = ["--fault-kv-send-delay-s=1.0", f"--transfer-timeout-s={TIMEOUT_S}", "--one-shot-max-tokens=0"]


def reserved_on(cluster, role: str):
    for r, node in cluster.nodes:
        if r == role and node.alive() and node_stats(node.address).num_reserved > 0:
            return node
    return None


def test_killing_the_decode_node_fails_that_request_in_time_and_prefill_keeps_serving(tiny_model):
    # --max-retries=0: the router's failover would finish the request on the other decode node
    # (tests/integration/test_router_failover.py); here the node-level failure must surface in time.
    with ParallelCluster(tiny_model, prefill=1, decode=2, node_args=SLOW_SEND, router_args=["--max-retries=0"]) as cluster:
        errors, started = [], time.monotonic()

        def send():
            with Client(cluster.url, timeout_s=60) as client:
                try:
                    client.complete(prompt="a long enough prompt " * 10, max_tokens=4)
                except grpc.RpcError as exc:
                    errors.append((exc.code(), time.monotonic() - started))

        thread = threading.Thread(target=send)
        thread.start()
        assert wait_until(lambda: reserved_on(cluster, "decode") is not None, 10, 0.05)
        victim = reserved_on(cluster, "decode")
        time.sleep(0.3)
        kill(victim)
        thread.join(30)
        assert not thread.is_alive()
        assert errors and errors[0][0] == grpc.StatusCode.UNAVAILABLE
        assert errors[0][1] < 4 * TIMEOUT_S + 5
        prefill = next(n for r, n in cluster.nodes if r == "prefill")
        assert used_blocks_settle_to_zero(prefill.address)
        time.sleep(1.5)  # the router's health poll notices the dead node
        with Client(cluster.url, timeout_s=60) as client:
            result = client.complete(prompt="after the fault", max_tokens=3, ignore_eos=True)
        assert len(result.token_ids) == 3 and result.final.decode_node != victim.address


def test_killing_the_prefill_node_mid_transfer_frees_the_decode_reservation(tiny_model):
    with ParallelCluster(tiny_model, prefill=1, decode=1, node_args=SLOW_SEND) as cluster:
        (prefill,), (decode,) = ([n for r, n in cluster.nodes if r == role] for role in ("prefill", "decode"))
        d_channel, d_stub = node_stub(decode.address)
        p_channel, p_stub = node_stub(prefill.address)
        reply = d_stub.Reserve(node_pb2.ReserveRequest(request_id="r1", num_prompt_tokens=40), timeout=5)
        assert node_stats(decode.address).num_used_blocks > 0
        sampling = common_pb2.SamplingParams(max_tokens=4)
        call = p_stub.Prefill.future(node_pb2.PrefillRequest(request_id="r1", prompt_token_ids=list(range(5, 45)),
                                                             sampling=sampling, target=reply.target), timeout=30)
        time.sleep(1.5)  # the first layer is on its way, the second not yet
        kill(prefill)
        with pytest.raises(grpc.RpcError):
            call.result()
        # nobody sends Abort: the decode node frees the blocks on its own
        assert used_blocks_settle_to_zero(decode.address, timeout_s=4 * TIMEOUT_S)
        assert node_stats(decode.address).num_reserved == 0
        d_channel.close()
        p_channel.close()
