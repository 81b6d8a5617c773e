"""Where the torch KV backend's checksum cost goes: the sender's hashing or the receiver's.

    python benchmarks/kv_checksum_cost.py --model .cache/models/smollm2-135m-instruct-s0-v1 \
        --tokens 180 740 --repeats 20

A diagnostic beside `kv_transfer.py` (same receiver process, same timing: the sender's begin() to
the receiver's DONE, layers read out of a pool into buffers lying back to back as a prefill node
reads them, each ratio the median of ratios to hot raw gloo measured in the same round).
Variants, interleaved round by round: `checksum` (as shipped: each layer hashed as the prefill
node's read copies it, MULSUM_64), `sender_hashes` (the read only copies; the sender's thread
hashes each layer inside the transfer, as before the fused read), `no_checksum`. Each with the
receiver dropping the layers (`*`: it hashes them apart) and writing them into a KV pool
(`*_pool`: it hashes them as the write copies them). So sender_hashes - checksum is the sender's
hashing as it runs inside a transfer, and checksum - no_checksum what the receiver's still costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from splitserve.bench.provenance import model_id, portable_args
from splitserve.engine import ModelConfig
from kv_raw_bench import RawGlooPair
from kv_transfer import Variant, _BackendPeer, meta_fields

RESULTS = Path(__file__).parent / "results" / "kv_checksum_cost.json"
VARIANTS = {"checksum": Variant("torch", True), "sender_hashes": Variant("torch", True, fused=False),
            "no_checksum": Variant("torch", False), "checksum_pool": Variant("torch", True, sink="pool"),
            "sender_hashes_pool": Variant("torch", True, fused=False, sink="pool"),
            "no_checksum_pool": Variant("torch", False, sink="pool")}


def measure(cfg: ModelConfig, tokens: list[int], repeats: int) -> list[dict]:
    peer, rows = _BackendPeer("torch"), []
    try:
        with RawGlooPair() as raw:
            for n in tokens:
                fields, total = meta_fields(cfg, n)
                samples: dict[str, list[float]] = {name: [] for name in ("raw", *VARIANTS)}
                for i in range(repeats + 1):  # round 0 warms up
                    measured = {"raw": raw.move(total, total // cfg.num_layers)}
                    measured.update({name: peer.seconds(fields, variant) for name, variant in VARIANTS.items()})
                    for name, seconds in measured.items():
                        samples[name] += [seconds] if i else []
                rows.append(_row(n, total, samples))
    finally:
        peer.close()
    return rows


def _row(n: int, total: int, samples: dict[str, list[float]]) -> dict:
    row = {"tokens": n, "bytes": total}
    for name, times in samples.items():
        row[f"{name}_ms"] = statistics.median(times) * 1e3
        row[f"{name}_vs_raw"] = statistics.median(r / t for r, t in zip(samples["raw"], times, strict=True))
    print(f"{n:6d} tokens {total / 1e6:6.1f} MB  " + "  ".join(
        f"{name} {row[f'{name}_ms']:.2f} ms ({row[f'{name}_vs_raw']:.0%})" for name in samples))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tokens", type=int, nargs="+", default=[180, 740])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"benchmark": "kv_checksum_cost", "model": model_id(args.model), "dtype": "float32",
              "config": portable_args({k: str(v) for k, v in vars(args).items()}),
              "method": __doc__.split("\n\n", 2)[2].strip(), "load_average_before": os.getloadavg()}
    report["rows"] = measure(ModelConfig.from_dir(args.model), args.tokens, args.repeats)
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
