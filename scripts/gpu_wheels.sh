#!/usr/bin/env bash
# Wheels for a GPU machine whose image has torch, transformers and numpy but not the rest of the
# project's runtime packages (the lent H200's image, Python 3.12): downloads them into .whl/ (git
# ignores it) for benchmarks/gpu_check.sh, which installs them there first. The versions are the
# ones this project's venv resolved; PY_VERSION picks the target Python (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
PACKAGES=(grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2
          cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 fastapi==0.165.0 starlette==1.10.0
          pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
          annotated-doc==0.0.7 uvicorn==0.55.0 httptools==0.9.0 redis==8.2.0 sniffio==1.3.1
          typing_extensions==4.16.0 anyio==4.16.0)
PLATFORMS=()
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
ls .whl
