#!/usr/bin/env bash
# Builds the container image for real with buildah (as root: vfs storage, chroot isolation),
# then runs `splitserve --help`, a node and the router from it and sends one request through them.
#
#   scripts/build_image.sh              # base image if missing, the cpu and demo targets, smoke test
#   SMOKE=0 scripts/build_image.sh      # build only (PRUNE=0: keep untagged images of older builds)
#   IMAGE=localhost/splitserve VARIANT=cpu DEBIAN_MIRROR=http://deb.debian.org/debian  (defaults)
#
# No registry needs to be reachable: the Dockerfile's base (python:3.11-slim) is made here when
# it is not in local storage, by a debootstrap of Debian bookworm (python3 is 3.11) tagged with
# that name, and the build never pulls. pip inside the build uses this machine's package sources
# (PIP_* environment, else `pip config`): find-links folders and file:// indexes are bind-mounted
# read-only at the same paths, and so is the CA bundle pip trusts. When a find-links folder holds
# the torch==2.13.0 CPU wheel, a one-package index over it replaces download.pytorch.org.
set -euo pipefail
cd "$(dirname "$0")/.."

export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
BASE=docker.io/library/python:3.11-slim
IMAGE=${IMAGE:-localhost/splitserve}
VARIANT=${VARIANT:-cpu}
TORCH_VERSION=2.13.0
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PIP=$(command -v .venv/bin/pip || command -v pip3 || command -v pip || true)
WORK=$(mktemp -d /tmp/splitserve-image.XXXXXX)
PIDS=() CONTAINERS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
  for ctr in "${CONTAINERS[@]}"; do buildah rm "$ctr" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "== $*" >&2; }

make_base() {
  if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    log "base $BASE is in local storage"
    return
  fi
  log "making $BASE: debootstrap of Debian bookworm from $MIRROR"
  local ctr root
  ctr=$(buildah from scratch)
  CONTAINERS+=("$ctr")
  root=$(buildah mount "$ctr")
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  buildah umount "$ctr" >/dev/null
  buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
  buildah commit --rm "$ctr" "$BASE" >/dev/null
  CONTAINERS=()
}

pip_setting() {  # NAME (e.g. find-links): PIP_<NAME> from the environment, else pip's config
  local var
  var="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
  if [ -n "${!var:-}" ]; then echo "${!var}"; elif [ -n "$PIP" ]; then "$PIP" config get "global.$1" 2>/dev/null || true; fi
}

pip_sources() {  # fills BUILD_ARGS and MOUNTS from this machine's pip settings
  local links extra index cert dir wheel
  links=$(pip_setting find-links) extra=$(pip_setting extra-index-url)
  index=$(pip_setting index-url) cert=$(pip_setting cert)
  BUILD_ARGS=(--build-arg "VARIANT=$VARIANT") MOUNTS=()
  for dir in $links; do
    dir=${dir#file://}
    [ -d "$dir" ] && MOUNTS+=(--volume "$dir:$dir:ro")
    wheel=$(ls "$dir"/torch-"$TORCH_VERSION"+"$VARIANT"-cp311-*.whl 2>/dev/null | head -1 || true)
    [ -n "$wheel" ] && torch_index "$wheel"
  done
  for dir in $extra $index; do
    case $dir in file://*) dir=$(dirname "${dir#file://}") && MOUNTS+=(--volume "$dir:$dir:ro") ;; esac
  done
  [ -n "$links" ] && BUILD_ARGS+=(--build-arg "PIP_FIND_LINKS=$links")
  # the torch step replaces the index: keep the machine's own index among the extra ones
  BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=${index:-https://pypi.org/simple} $extra")
  [ -n "$index" ] && BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=$index")
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    MOUNTS+=(--volume "$cert:/etc/ssl/certs/build-ca.pem:ro")
    BUILD_ARGS+=(--build-arg "PIP_CERT=/etc/ssl/certs/build-ca.pem")
  fi
}

torch_index() {  # WHEEL: $WORK/torch-index/$VARIANT/torch/ lists it; the Dockerfile adds /$VARIANT
  mkdir -p "$WORK/torch-index/$VARIANT/torch"
  echo "<a href=\"file://$1\">$(basename "$1")</a>" >"$WORK/torch-index/$VARIANT/torch/index.html"
  MOUNTS+=(--volume "$WORK/torch-index:$WORK/torch-index:ro")
  BUILD_ARGS+=(--build-arg "TORCH_INDEX=file://$WORK/torch-index")
}

build() {  # TARGET TAG
  log "building --target $1 -> $2"
  buildah bud --layers --force-rm --pull=never --network host --target "$1" "${BUILD_ARGS[@]}" "${MOUNTS[@]}" -t "$2" .
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {  # NAME CONTAINER ARGS...: runs `splitserve ARGS` in the container, waits for its READY line
  local name=$1 ctr=$2
  shift 2
  setsid buildah run --network host "$ctr" -- splitserve "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 240); do
    grep -q READY "$WORK/$name.log" && { log "$name: $(grep READY "$WORK/$name.log")"; return; }
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.5
  done
  tail -20 "$WORK/$name.log"
  log "$name did not become ready"
  exit 1
}

smoke() {  # IMAGE: --help, a mixed node and the router, one gRPC and one HTTP request
  local node router grpc http text
  node=$(buildah from --pull=never "$1") && CONTAINERS+=("$node")
  router=$(buildah from --pull=never "$1") && CONTAINERS+=("$router")
  log "$(buildah run "$node" -- sh -c 'id -u; python --version')"
  buildah run "$node" -- splitserve --help >/dev/null
  # the native CPU kernels built in the image (x86-64-v3) load, with no compiler, as on a cluster's node
  buildah run "$node" -- sh -c '! command -v g++'
  buildah run "$node" -- python -c "from splitserve.engine import native
assert native.layer_ops() and native.attention_ops() and native.quant_ops(), 'native kernels did not load'"
  log "native CPU kernels (built ahead, x86-64-v3) load in the image"
  grpc=$(free_port) http=$(free_port)
  local port
  port=$(free_port)
  start node "$node" node --role mixed --model /models/small --host 127.0.0.1 --port "$port" --threads 1
  start router "$router" router --model /models/small --host 127.0.0.1 --port "$grpc" --http-port "$http" \
    --nodes "mixed=127.0.0.1:$port"
  text=$(buildah run --network host "$router" -- splitserve complete --url "grpc://127.0.0.1:$grpc" \
    --prompt "The capital of France is" --max-tokens 8)
  log "gRPC completion: $text"
  python3 - "$http" <<'EOF'
import json, sys, urllib.request
body = {"model": "small", "prompt": "The history of", "max_tokens": 8, "temperature": 0}
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(request, timeout=60))
assert reply["usage"]["completion_tokens"] == 8, reply
print("== HTTP completion:", json.dumps(reply["choices"][0]["text"]), file=sys.stderr)
EOF
}

make_base
pip_sources
build runtime "$IMAGE:$VERSION-$VARIANT"
build demo "$IMAGE:demo-$VARIANT"
[ "${SMOKE:-1}" = 0 ] || smoke "$IMAGE:demo-$VARIANT"
# vfs keeps a full copy per image: drop the untagged ones older builds left (PRUNE=0 keeps them)
[ "${PRUNE:-1}" = 0 ] || buildah rmi --prune >/dev/null
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E "splitserve|python" >&2
log "ok"
