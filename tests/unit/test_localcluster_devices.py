"""splitserve up --device: each node's device and the KV transport a local cluster can use."""

import pytest

from splitserve.localcluster.devices import plan_devices

P, D, M = "prefill", "decode", "mixed"


def test_cpu_changes_nothing():
    assert plan_devices("cpu", [P, D], 0, "torch") == (["cpu", "cpu"], "torch", "")


def test_cuda_gives_each_node_its_own_gpu_and_keeps_nccl_when_there_are_enough():
    assert plan_devices("cuda", [P, D, D], 4, "torch") == (["cuda:0", "cuda:1", "cuda:2"], "torch", "")


def test_shared_gpus_send_the_kv_over_gloo_and_say_so():
    devices, transport, note = plan_devices("cuda", [P, D, D], 2, "torch")
    assert devices == ["cuda:0", "cuda:1", "cuda:0"] and transport == "gloo"
    assert "3 prefill/decode nodes on 2 GPU(s)" in note


def test_one_named_gpu_for_a_split_pair_needs_gloo_but_not_for_colocated_nodes():
    assert plan_devices("cuda:1", [P, D], 2, "torch")[:2] == (["cuda:1", "cuda:1"], "gloo")
    assert plan_devices("cuda:0", [M, M], 1, "torch") == (["cuda:0", "cuda:0"], "torch", "")
    assert plan_devices("cuda", [P, D], 1, "grpc") == (["cuda:0", "cuda:0"], "grpc", "")


@pytest.mark.parametrize("device, gpus, message", [("cuda", 0, "no CUDA device"), ("cuda:2", 2, "cuda:0 .. cuda:1"),
                                                    ("cuda:x", 2, "cuda:0 .. cuda:1"), ("tpu", 1, "cpu, cuda or cuda:INDEX")])
def test_bad_devices_are_refused_by_name(device, gpus, message):
    with pytest.raises(ValueError, match=message):
        plan_devices(device, [P, D], gpus, "torch")


def test_the_cluster_passes_each_node_its_device_after_the_model_flags(tmp_path):
    from splitserve.localcluster.cluster import LocalCluster

    cluster = LocalCluster(tmp_path, prefill=1, decode=1, devices=["cuda:0", "cuda:1"], node_args=["--dtype", "bfloat16"])
    command = cluster.node_command("decode", device="cuda:1")
    assert command[command.index("--device") + 1] == "cuda:1"
    assert command.index("--device") < command.index("--dtype")  # a user's --node-arg=--device=... still wins
    assert "--device" not in cluster.node_command("decode")


def test_devices_go_round_in_start_order_and_stay_with_their_node(tmp_path):
    from splitserve.localcluster.cluster import LocalCluster

    cluster = LocalCluster(tmp_path, prefill=1, decode=2, devices=["cuda:0", "cuda:1"])
    assert [cluster.assign_device(n) for n in ("prefill-0", "decode-0", "decode-1")] == ["cuda:0", "cuda:1", "cuda:0"]
    assert cluster.assign_device("decode-0") == "cuda:1"  # a restart keeps it
    assert LocalCluster(tmp_path).assign_device("prefill-0") is None
