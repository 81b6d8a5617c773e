# syntax=docker/dockerfile:1
# splitserve: one image runs every service; the command picks it (ENTRYPOINT is the `splitserve` CLI).
#
# Build (VARIANT picks the torch build; the tag suffix is the one the Helm chart expects,
# image.repository:TAG-VARIANT):
#   docker build --build-arg VARIANT=cpu -t splitserve:0.1.0-cpu .
#   docker build --build-arg VARIANT=cuda -t splitserve:0.1.0-cuda .
#   docker build --target demo --build-arg VARIANT=cpu -t splitserve:demo-cpu .
# The demo target adds the `small` model at /models/small (helm/splitserve/examples/values-cpu-demo.yaml).
# scripts/build_image.sh builds the cpu and demo targets with buildah where no registry is
# reachable (a local Debian bookworm base, this machine's pip sources) and runs them.
#
# Run (any service, by command):
#   docker run --rm splitserve:demo-cpu node --role prefill --model /models/small --host 0.0.0.0 --port 50051
#   docker run --rm splitserve:demo-cpu node --role decode --model /models/small --host 0.0.0.0 --port 50052 --kv-port 29500
#   docker run --rm -p 8000:8000 splitserve:demo-cpu router --model /models/small --host 0.0.0.0 --nodes prefill=prefill:50051,decode=decode:50052
#   docker run --rm --gpus all splitserve:0.1.0-cuda node --role mixed --model /models/m --host 0.0.0.0 --device cuda --dtype bfloat16

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
# The chart's podSecurityContext runs as this user (runAsUser 10001).
RUN groupadd --gid 10001 splitserve \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin splitserve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

FROM base AS builder
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# CUDA build of torch for VARIANT=cuda; its wheels carry the CUDA runtime, the host the driver.
ARG TORCH_CUDA=cu130
ARG TORCH_INDEX=https://download.pytorch.org/whl
# Other package sources for pip (a mirror, find-links, a CA bundle); unset, pip uses PyPI.
# scripts/build_image.sh passes the building machine's own, bind-mounted into the build.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
RUN python -m venv /opt/venv
# g++ builds the native CPU kernels (decode attention, RMSNorm/RoPE/SiLU, Q4_1/Q8_0 linears, KV checksums;
# splitserve/engine/native.py) below, for every AVX2+FMA CPU (-march=x86-64-v3) rather than this
# machine's: a node loads them from /opt/splitserve-native with no compiler and no build at start.
RUN if [ "$VARIANT" = cpu ]; then \
        apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*; \
    fi
RUN case "$VARIANT" in \
        cpu) index="$TORCH_INDEX/cpu" ;; \
        cuda) index="$TORCH_INDEX/$TORCH_CUDA" ;; \
        *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir "torch==$TORCH_VERSION" --index-url "$index"
WORKDIR /src
# The context is what .dockerignore leaves: pyproject.toml, README.md and the Python packages.
COPY . .
RUN pip install --no-cache-dir . && splitserve --help >/dev/null
RUN mkdir -p /opt/splitserve-native && if [ "$VARIANT" = cpu ]; then \
        SPLITSERVE_NATIVE_MARCH=x86-64-v3 SPLITSERVE_NATIVE_DIR=/opt/splitserve-native python -c \
        "from splitserve.engine import native; assert native.layer_ops() is not None, 'native kernels did not build'"; \
    fi

FROM builder AS demo-model
RUN splitserve make-model --preset small --out /models/small

FROM base AS app
ARG VARIANT=cpu
# The native kernels use OpenMP (libgomp); the library itself is built in the builder stage.
RUN if [ "$VARIANT" = cpu ]; then \
        apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi
ENV SPLITSERVE_NATIVE_MARCH=x86-64-v3 \
    SPLITSERVE_NATIVE_DIR=/opt/splitserve-native
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/splitserve-native /opt/splitserve-native
USER 10001:10001
WORKDIR /home/splitserve
# router HTTP and gRPC, node gRPC, KV rendezvous, metrics
EXPOSE 8000 50050 50051 29500 9100
ENTRYPOINT ["splitserve"]
CMD ["--help"]

FROM app AS demo
COPY --from=demo-model --chown=10001:10001 /models /models

FROM app AS runtime
