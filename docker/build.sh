#!/usr/bin/env bash
# Build the images, cached: re-running after a source change rebuilds only the last layers.
#
#   docker/build.sh               # cpu: the base image (if missing) + infer-distill:cpu
#   docker/build.sh cuda          # infer-distill:cuda (torch 2.14.1 + CUDA 13 wheels, ~7 GB)
#   docker/build.sh moto          # infer-distill-moto:5.2.5, the S3 server of compose.test.yaml
#   docker/build.sh cpu moto      # several at once
#
# Environment:
#   BASE_IMAGE        base tag (default infer-distill-base:bookworm-py3.11, made by
#                     build-base.sh when missing); any Debian bookworm image with python3 and
#                     python3-venv works where images can be pulled (e.g. python:3.11-slim-bookworm)
#   IMAGE_PREFIX      image name (default infer-distill): tags are $IMAGE_PREFIX:cpu|cuda
#   WHEEL_DIRS        folders with torch/torchvision/nvidia wheels to use before any index
#                     (default: /opt/wheels /opt/pypi-more/files where they exist). They are
#                     served read-only on 127.0.0.1:$WHEELS_PORT for the build (no copy into
#                     the build context, nothing of them stays in the image but the install).
#   WHEELS_PORT       default 8799; fixed, because the URL is part of the layer cache key
#   PIP_CERT          CA bundle pip must trust (e.g. behind a TLS-intercepting proxy): served
#                     the same way, used and deleted within each pip step (default: SSL_CERT_FILE)
#   TORCH_INDEX_URL   extra index for torch (default for cpu when no local CPU wheel is found:
#                     https://download.pytorch.org/whl/cpu)
#   DOCKER_BUILD_ARGS extra arguments for `docker build`
#   IIDFILE_DIR       write each image's ID to $IIDFILE_DIR/<target>.iid (the tests run exactly
#                     the image they built, whatever retags the name meanwhile)
# Uses the legacy builder unless DOCKER_BUILDKIT is set (BuildKit may be missing).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-infer-distill-base:bookworm-py3.11}
IMAGE_PREFIX=${IMAGE_PREFIX:-infer-distill}
WHEELS_PORT=${WHEELS_PORT:-8799}
MOTO_VERSION=${MOTO_VERSION:-5.2.5}
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cpu)

docker info >/dev/null 2>&1 || { echo "no Docker daemon answers: start one (as root: docker/dockerd-loopback.sh)" >&2; exit 1; }

# One build at a time on this machine: builds share the wheel server's port.
exec 9>/tmp/infer-distill-docker-build.lock
flock 9

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$BASE_IMAGE" = infer-distill-base:bookworm-py3.11 ]; then
        BASE_IMAGE=$BASE_IMAGE bash docker/build-base.sh
    else
        docker pull "$BASE_IMAGE"
    fi
fi

# --- wheels (and the CA pip needs) from this machine, served on loopback -------------------------
# The build's RUN steps reach 127.0.0.1 through --network host. Nothing is copied into the
# build context, and nothing served stays in an image.
WHEELS_URL=""
PIP_CERT_URL=""
SERVER_PID=""
stop_server() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; }
trap stop_server EXIT
start_server() {
    local dirs=${WHEEL_DIRS-} stage=/tmp/infer-distill-wheels d f n=0
    local cert=${PIP_CERT:-${SSL_CERT_FILE:-}}
    if [ -z "${WHEEL_DIRS+set}" ]; then
        for d in /opt/wheels /opt/pypi-more/files /opt/pypi/files; do [ -d "$d" ] && dirs="$dirs $d"; done
    fi
    rm -rf "$stage"; mkdir -p "$stage/wheels"
    for d in $dirs; do
        for f in "$d"/torch-*.whl "$d"/torchvision-*.whl "$d"/nvidia_*.whl "$d"/cuda_*.whl "$d"/triton-*.whl; do
            [ -f "$f" ] || continue
            ln -sf "$f" "$stage/wheels/$(basename "$f")"; n=$((n + 1))
        done
    done
    # A CA bundle that pip on this machine is told to use (e.g. a TLS-intercepting proxy's).
    [ -n "$cert" ] && [ -f "$cert" ] && ln -sf "$cert" "$stage/ca-bundle.crt"
    [ "$n" -gt 0 ] || [ -e "$stage/ca-bundle.crt" ] || return 0
    python3 -m http.server "$WHEELS_PORT" --bind 127.0.0.1 --directory "$stage" >/dev/null 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$WHEELS_PORT/', timeout=1)" 2>/dev/null; then
            [ "$n" -gt 0 ] && WHEELS_URL="http://127.0.0.1:$WHEELS_PORT/wheels/"
            [ -e "$stage/ca-bundle.crt" ] && PIP_CERT_URL="http://127.0.0.1:$WHEELS_PORT/ca-bundle.crt"
            echo "serving on 127.0.0.1:$WHEELS_PORT: $n local wheels (from$dirs)${PIP_CERT_URL:+, CA bundle $cert for pip}"
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "could not serve on 127.0.0.1:$WHEELS_PORT (port taken? set WHEELS_PORT)" >&2
    exit 1
}
start_server

build() {  # build TARGET TAG DOCKERFILE CONTEXT ARGS...
    local target=$1 tag=$2 file=$3 context=$4 started size
    shift 4
    [ -z "${IIDFILE_DIR:-}" ] || set -- "$@" --iidfile "$IIDFILE_DIR/$target.iid"
    started=$(date +%s)
    echo "== building $tag"
    # shellcheck disable=SC2086
    docker build --network host --force-rm -f "$file" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_CERT_URL="$PIP_CERT_URL" "$@" ${DOCKER_BUILD_ARGS:-} -t "$tag" "$context" \
        >"/tmp/infer-distill-build-${tag//[:\/]/_}.log" 2>&1 \
        || { tail -n 40 "/tmp/infer-distill-build-${tag//[:\/]/_}.log" >&2; echo "build of $tag failed; full log: /tmp/infer-distill-build-${tag//[:\/]/_}.log" >&2; exit 1; }
    size=$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}')
    echo "built $tag in $(( $(date +%s) - started ))s, $size"
}

for target in "${targets[@]}"; do
    case "$target" in
        cpu|cuda)
            index=${TORCH_INDEX_URL-}
            if [ -z "$index" ] && [ "$target" = cpu ] && ! ls /tmp/infer-distill-wheels/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
                index=https://download.pytorch.org/whl/cpu
            fi
            build "$target" "$IMAGE_PREFIX:$target" docker/Dockerfile . --build-arg VARIANT="$target" \
                --build-arg TORCH_FIND_LINKS="$WHEELS_URL" --build-arg TORCH_INDEX_URL="$index"
            ;;
        moto)
            build moto "$IMAGE_PREFIX-moto:$MOTO_VERSION" docker/moto.Dockerfile docker --build-arg MOTO_VERSION="$MOTO_VERSION"
            ;;
        *) echo "unknown target '$target': use cpu, cuda or moto" >&2; exit 2 ;;
    esac
done
