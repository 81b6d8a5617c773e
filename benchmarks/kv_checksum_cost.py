"""Where the torch KV backend's checksum cost goes: the sender's hashing or the receiver's.

    python benchmarks/kv_checksum_cost.py --model .cache/models/smollm2-135m-instruct-s0-v1 \
        --tokens 180 740 --repeats 20

A diagnostic beside `kv_transfer.py` (same receiver process, same timing: the sender's begin() to
the receiver's DONE, layers lying back to back as a prefill node reads them, each ratio the
median of ratios to hot raw gloo measured in the same round). Variants, interleaved round by
round: `checksum` (as shipped), `sender_hashed_ahead` (checksummed, but the sender's xxh3 of
every layer is computed before the clock starts and looked up inside the transfer: what is left
is the receiver's hashing and the checksum entries on the wire), `no_checksum`. So
checksum - sender_hashed_ahead is the sender's hashing as it runs inside a transfer, and
sender_hashed_ahead - no_checksum the receiver's. The lookup replaces the sender module's
`checksum` function in this process only (a benchmark's patch, not an API).
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
from splitserve.kvtransfer import TransferMeta
from splitserve.kvtransfer import torch_sender
from splitserve.kvtransfer.checksum import kind_for, layer_seed
from splitserve.kvtransfer.wire import as_bytes, request_hash
from kv_raw_bench import RawGlooPair
from kv_transfer import _BackendPeer, meta_fields

RESULTS = Path(__file__).parent / "results" / "kv_checksum_cost.json"
SHIPPED = torch_sender.checksum


class _HashedAhead:
    """The sender's checksum function, answering from a table filled before the clock starts."""

    def __init__(self) -> None:
        self.table: dict[tuple[int, int, int], int] = {}

    def prepare(self, meta: TransferMeta, layers: list[torch.Tensor]) -> None:
        self.table.clear()
        rhash = request_hash(meta.request_id)
        for layer, kv in enumerate(layers):
            flat, seed = as_bytes(kv), layer_seed(rhash, layer)
            self.table[(flat.data_ptr(), flat.numel(), seed)] = SHIPPED(kind_for(kv.device), flat, seed)

    def __call__(self, kind, flat: torch.Tensor, seed: int) -> int:
        value = self.table.get((flat.data_ptr(), flat.numel(), seed))
        return SHIPPED(kind, flat, seed) if value is None else value


def measure(cfg: ModelConfig, tokens: list[int], repeats: int) -> list[dict]:
    peer, ahead, rows = _BackendPeer("torch"), _HashedAhead(), []
    try:
        with RawGlooPair() as raw:
            for n in tokens:
                fields, total = meta_fields(cfg, n)
                samples: dict[str, list[float]] = {name: [] for name in
                                                   ("raw", "checksum", "sender_hashed_ahead", "no_checksum")}
                for i in range(repeats + 1):  # round 0 warms up
                    measured = {"raw": raw.move(total, total // cfg.num_layers),
                                "checksum": peer.seconds(fields, True)}
                    torch_sender.checksum = ahead
                    try:
                        measured["sender_hashed_ahead"] = peer.seconds(fields, True, prepare=ahead.prepare)
                    finally:
                        torch_sender.checksum = SHIPPED
                    measured["no_checksum"] = peer.seconds(fields, False)
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
