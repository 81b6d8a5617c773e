"""`splitserve profile`'s work: measure the engine and the transports, fit, assemble a Profile."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from splitserve.sim.fit import Breakpoints
from splitserve.sim.measure import FULL, QUICK, decode_points, make_engine, prefill_points, warm_up
from splitserve.sim.measure_transfer import transfer_points
from splitserve.sim.node_flags import node_defaults
from splitserve.sim.profile import EngineShape, Profile, StepModel


NODE = node_defaults()


@dataclass(frozen=True)
class ProfileConfig:
    model_dir: str
    quick: bool = False
    threads: int = NODE.threads
    device: str = NODE.device
    dtype: str = NODE.dtype
    kv_cache_dtype: str = NODE.kv_cache_dtype  # the KV pool's (and the transfers') dtype: auto is the model's
    backends: tuple[str, ...] = ("torch", "grpc")
    # the node's serving flags (its KV capacity and scheduler limits), defaults from node/cli.py
    kv_cache_bytes: int = NODE.kv_cache_bytes
    num_blocks: int = NODE.num_blocks  # 0: from kv_cache_bytes, as on the node
    block_size: int = NODE.block_size
    max_num_seqs: int = NODE.max_num_seqs
    max_num_batched_tokens: int = NODE.max_batched_tokens
    one_shot_max_tokens: int = NODE.one_shot_max_tokens
    corun: int = 0  # > 0: also time steps in 1..corun processes at once (host.py's stretch; measure_corun.py)

    def __post_init__(self):
        if self.corun < 0:
            raise ValueError(f"corun must be >= 0, got {self.corun}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        unknown = set(self.backends) - {"torch", "grpc"}
        if unknown or not self.backends:
            raise ValueError(f"backends must be some of torch, grpc; got {self.backends}")
        if not (Path(self.model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"no model at {self.model_dir} (config.json missing)")

    @property
    def model_name(self) -> str:
        """The model folder relative to the working directory when it is under it, else its name
        (a profile is committed and shared: no machine paths in it)."""
        path = Path(self.model_dir).resolve()
        try:
            return str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return path.name


def engine_shape(config: ProfileConfig, model_config, kv_bytes_per_token: int, prompt_special_tokens: int = 0) -> EngineShape:
    per_block = kv_bytes_per_token * config.block_size
    return EngineShape(block_size=config.block_size,
                       num_blocks=config.num_blocks or max(1, config.kv_cache_bytes // per_block),  # Engine._blocks_for
                       max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
                       kv_bytes_per_token=kv_bytes_per_token, num_layers=model_config.num_layers,
                       one_shot_max_tokens=config.one_shot_max_tokens, prompt_special_tokens=prompt_special_tokens)


def pads_rows(engine) -> bool:
    """True when the engine's linears are cpu_linear.py's packed ones (they pad a step's rows)."""
    from splitserve.engine.cpu_linear import PackedLinear

    return any(isinstance(m, PackedLinear) for m in engine.model.modules())


def run_profile(config: ProfileConfig, log=print) -> Profile:
    import torch

    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    plan = QUICK if config.quick else FULL
    plan = type(plan)(**{**vars(plan), "max_num_batched_tokens": config.max_num_batched_tokens})
    engine = make_engine(config.model_dir, plan, config.dtype, config.device, config.kv_cache_dtype)
    warm_up(engine)
    prefill = prefill_points(engine, plan)
    log(f"prefill: {len(prefill)} steps measured ({time.perf_counter() - started:.1f}s)")
    ratios: list[float] = []
    decode = decode_points(engine, plan, ratios)
    log(f"decode: {len(decode)} batch shapes measured ({time.perf_counter() - started:.1f}s)")
    mc = engine.model_config
    shape = engine_shape(config, mc, mc.kv_bytes_per_token(engine.config.kv_torch_dtype),
                         len(engine.tokenizer.encode("")))  # the router encodes text prompts with special tokens
    row_buckets, kv_dtype = pads_rows(engine), engine.config.kv_dtype
    del engine
    layout = dict(num_layers=mc.num_layers, num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim, dtype=kv_dtype)
    tokens = [64, 1024] if config.quick else [16, 256, 2048, 8192]
    transfer = {b: transfer_points(b, layout, tokens, 2 if config.quick else 3) for b in config.backends}
    log(f"transfer: {', '.join(transfer)} measured ({time.perf_counter() - started:.1f}s)")
    steps = prefill + decode
    host = {}
    if config.corun:
        from splitserve.sim.measure_corun import CorunConfig, measure_corun

        host["corun"] = measure_corun(CorunConfig(config.model_dir, config.threads, config.corun, dtype=config.dtype), log)
        log(f"corun: stretch {host['corun']['stretch']} ({time.perf_counter() - started:.1f}s)")
    return Profile(
        step=StepModel.fit(steps, row_buckets=row_buckets), engine=shape,
        transfer={b: Breakpoints.through_medians(p) for b, p in transfer.items()},
        meta={"model": Path(config.model_dir).name, "model_dir": config.model_name, "threads": config.threads,
              "device": config.device, "dtype": config.dtype, "kv_cache_dtype": kv_dtype, "quick": config.quick,
              "host": platform.node(),
              "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "profile_seconds": round(time.perf_counter() - started, 1)},
        points={"steps": [vars(p) for p in steps], "transfer": {b: [list(x) for x in p] for b, p in transfer.items()},
                "decode_step_ratios": sorted(round(r, 4) for r in ratios)},
        host=host)
