"""The engine keeps SDPA off cuDNN on CUDA (cuDNN plans every new shape; decode meets a new one
every step: see `leave_out_cudnn_sdpa`), and changes nothing on the CPU."""

import torch

from splitserve.engine.attention import leave_out_cudnn_sdpa


def test_cuda_devices_turn_cudnn_sdpa_off_and_the_cpu_leaves_it(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    leave_out_cudnn_sdpa("cpu")
    leave_out_cudnn_sdpa(torch.device("cpu"))
    assert calls == []
    leave_out_cudnn_sdpa("cuda:1")
    leave_out_cudnn_sdpa("cuda")
    assert calls == [False, False]
