"""Which torch device each node of a local cluster takes, and whether the KV can go over NCCL."""

from __future__ import annotations


def plan_devices(device: str, roles: list[str], gpu_count: int, transport: str) -> tuple[list[str], str, str]:
    """Each node's device (in `roles`' order), the KV transport, and a note for the operator ("" if none).

    "cpu", or one named device ("cuda:1"): every node on it. "cuda": node k on cuda:k while there
    are GPUs enough for one each, else round-robin over them. The torch transport moves CUDA KV
    over NCCL, which refuses two ranks on one device: when a prefill or decode node shares its GPU
    with another such node, the KV goes over gloo instead, through host memory (the `gloo`
    transport; on this project's CPU machine the torch backend on gloo moves KV 2.5-3.7x faster
    than gRPC)."""
    if device == "cpu":
        return ["cpu"] * len(roles), transport, ""
    if not device.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:INDEX, got {device!r}")
    if gpu_count < 1:
        raise ValueError(f"--device {device}: no CUDA device is visible here")
    if device == "cuda":
        devices = [f"cuda:{k % gpu_count}" for k in range(len(roles))]
    else:
        index = device.partition(":")[2]
        if not index.isdigit() or int(index) >= gpu_count:
            raise ValueError(f"--device {device}: this machine has cuda:0 .. cuda:{gpu_count - 1}")
        devices = [device] * len(roles)
    transferring = [d for d, role in zip(devices, roles) if role != "mixed"]
    if transport == "torch" and len(set(transferring)) < len(transferring):
        return devices, "gloo", (f"{len(transferring)} prefill/decode nodes on {len(set(transferring))} GPU(s): "
                                 "the KV goes over gloo through host memory (NCCL needs a GPU per node)")
    return devices, transport, ""
