"""`splitserve profile`'s work: measure the engine and the transports, fit, assemble a Profile."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from splitserve.sim.fit import Breakpoints
from splitserve.sim.measure import FULL, QUICK, decode_points, make_engine, prefill_points, warm_up
from splitserve.sim.measure_transfer import transfer_points
from splitserve.sim.profile import EngineShape, Profile, StepModel


@dataclass(frozen=True)
class ProfileConfig:
    model_dir: str
    quick: bool = False
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    backends: tuple[str, ...] = ("torch", "grpc")
    # the node's serving flags (the KV capacity and scheduler limits the simulator uses)
    kv_cache_bytes: int = 1 << 30
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    one_shot_max_tokens: int = 256

    def __post_init__(self):
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        unknown = set(self.backends) - {"torch", "grpc"}
        if unknown or not self.backends:
            raise ValueError(f"backends must be some of torch, grpc; got {self.backends}")
        if not (Path(self.model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"no model at {self.model_dir} (config.json missing)")


def engine_shape(config: ProfileConfig, model_config, dtype_bytes: int) -> EngineShape:
    per_token = 2 * model_config.num_layers * model_config.num_kv_heads * model_config.head_dim * dtype_bytes
    return EngineShape(block_size=config.block_size,
                       num_blocks=max(1, config.kv_cache_bytes // (per_token * config.block_size)),
                       max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
                       kv_bytes_per_token=per_token, num_layers=model_config.num_layers,
                       one_shot_max_tokens=config.one_shot_max_tokens)


def run_profile(config: ProfileConfig, log=print) -> Profile:
    import torch

    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    plan = QUICK if config.quick else FULL
    plan = type(plan)(**{**vars(plan), "max_num_batched_tokens": config.max_num_batched_tokens})
    engine = make_engine(config.model_dir, plan, config.dtype, config.device)
    warm_up(engine)
    prefill = prefill_points(engine, plan)
    log(f"prefill: {len(prefill)} steps measured ({time.perf_counter() - started:.1f}s)")
    decode = decode_points(engine, plan)
    log(f"decode: {len(decode)} batch shapes measured ({time.perf_counter() - started:.1f}s)")
    mc = engine.model_config
    shape = engine_shape(config, mc, torch.finfo(engine.config.torch_dtype).bits // 8)
    del engine
    layout = dict(num_layers=mc.num_layers, num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim, dtype=config.dtype)
    tokens = [64, 1024] if config.quick else [16, 256, 2048, 8192]
    transfer = {b: transfer_points(b, layout, tokens, 2 if config.quick else 3) for b in config.backends}
    log(f"transfer: {', '.join(transfer)} measured ({time.perf_counter() - started:.1f}s)")
    steps = prefill + decode
    return Profile(
        step=StepModel.fit(steps), engine=shape,
        transfer={b: Breakpoints.through_medians(p) for b, p in transfer.items()},
        meta={"model": Path(config.model_dir).name, "model_dir": str(config.model_dir), "threads": config.threads,
              "device": config.device, "dtype": config.dtype, "quick": config.quick, "host": platform.node(),
              "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "profile_seconds": round(time.perf_counter() - started, 1)},
        points={"steps": [vars(p) for p in steps], "transfer": {b: [list(x) for x in p] for b, p in transfer.items()}})
