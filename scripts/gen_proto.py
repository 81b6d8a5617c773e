"""Generate the Python protobuf + gRPC code for every `proto/**/*.proto`.

    python scripts/gen_proto.py           # (re)write the generated files into the repo
    python scripts/gen_proto.py --check   # exit 1 if the committed files are not what it would write

`-I proto` makes the output path equal the import path: `proto/splitserve/api/v1/x.proto`
-> `splitserve/api/v1/x_pb2.py`, `x_pb2_grpc.py`, `x_pb2.pyi`. The output depends on the
grpcio-tools version, which pyproject pins.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    sources = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", f"--pyi_out={out_dir}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(root: Path) -> set[str]:
    """Relative paths of generated files that sit next to where the .proto files map to."""
    found = set()
    for package in {p.relative_to(PROTO_DIR).parent for p in proto_files()}:
        folder = root / package
        if folder.is_dir():
            found |= {str(f.relative_to(root)) for f in folder.iterdir() if f.name.endswith(SUFFIXES)}
    return found


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        expected, committed = generated_files(Path(tmp)), generated_files(ROOT)
        problems = [f"missing: {p}" for p in sorted(expected - committed)]
        problems += [f"stale (no .proto): {p}" for p in sorted(committed - expected)]
        problems += [f"differs: {p}" for p in sorted(expected & committed)
                     if not filecmp.cmp(Path(tmp) / p, ROOT / p, shallow=False)]
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("generated code is out of date: run `make proto`", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    generate(ROOT)
    print(f"generated code for {len(proto_files())} .proto file(s)")
    return 0


def _use_project_venv() -> None:
    """Run under the project's .venv when this interpreter lacks grpcio-tools (e.g. a bare python3)."""
    import importlib.util
    import os

    venv_python = ROOT / ".venv" / "bin" / "python"
    if importlib.util.find_spec("grpc_tools") is None and venv_python.exists() and Path(sys.executable) != venv_python:
        os.execv(venv_python, [str(venv_python), __file__, *sys.argv[1:]])


if __name__ == "__main__":
    _use_project_venv()
    sys.exit(main())
