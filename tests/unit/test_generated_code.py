"""The committed protobuf/gRPC code is exactly what `scripts/gen_proto.py` generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_output_path_is_the_import_path():
    from splitserve.api.v1 import kvtransfer_pb2, kvtransfer_pb2_grpc

    assert kvtransfer_pb2.DESCRIPTOR.name == "splitserve/api/v1/kvtransfer.proto"
    assert hasattr(kvtransfer_pb2_grpc, "KVTransferStub")
