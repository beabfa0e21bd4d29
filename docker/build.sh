#!/usr/bin/env bash
# Build the images, cached: re-running after a source change rebuilds only the last layers.
#
#   docker/build.sh               # infer-distill:cpu
#   docker/build.sh cuda          # infer-distill:cuda (torch 2.14.1 + CUDA 13 wheels, ~7 GB)
#   docker/build.sh moto          # infer-distill-moto:5.2.5, the S3 server of compose.moto.yaml
#   docker/build.sh cpu moto      # several at once
#   docker/build.sh --platform linux/arm64 cpu    # another platform (default linux/amd64)
#
# cpu and cuda are tagged $IMAGE_PREFIX:<variant> and $IMAGE_PREFIX:<version>-<variant> (version
# from pyproject.toml, e.g. infer-distill:0.1.0-cuda: the Helm chart's default tag).
#
# Environment:
#   PLATFORM          the image's platform (default linux/amd64, what x86 GPU nodes run, also when
#                     building on Apple Silicon; --platform overrides it); empty: the build host's.
#                     A local base (build-base.sh) has the build host's platform.
#   TORCH_CUDA        cuda only: PyTorch's CUDA build for older drivers, e.g. cu126 (driver >= 560.28)
#                     or cu128 (>= 570.26), from https://download.pytorch.org/whl/<TORCH_CUDA>;
#                     default: PyPI's CUDA 13.0 build (driver >= 580.65.06)
#   BASE_IMAGE        base image (default python:3.11-slim-bookworm, pulled from Docker Hub). Where
#                     nothing can be pulled: BASE_IMAGE=infer-distill-base:bookworm-py3.11, which
#                     build-base.sh makes with debootstrap when missing (Linux, root)
#   IMAGE_PREFIX      image name (default infer-distill): tags are $IMAGE_PREFIX:cpu|cuda
#   WHEEL_DIRS        local folders (space-separated) with torch/torchvision/nvidia wheels to
#                     use before any index, e.g. WHEEL_DIRS=/path/to/wheels (default: none).
#                     They are served read-only on 127.0.0.1:$WHEELS_PORT for the build (no copy
#                     into the build context, nothing of them stays in the image but the install).
#   WHEELS_PORT       default 8799; fixed, because the URL is part of the layer cache key
#   PIP_CERT          CA bundle pip must trust (e.g. behind a TLS-intercepting proxy): served
#                     the same way, used and deleted within each pip step (default: SSL_CERT_FILE)
#   TORCH_INDEX_URL   extra index for torch (default for cpu when no local CPU wheel is found:
#                     https://download.pytorch.org/whl/cpu)
#   DOCKER_BUILDKIT   1/0: BuildKit or the legacy builder (default: BuildKit where `docker buildx`
#                     is installed, as Docker Desktop and docker-ce have it)
#   DOCKER_BUILD_ARGS extra arguments for `docker build`
#   IIDFILE_DIR       write each image's ID to $IIDFILE_DIR/<target>.iid (the tests run exactly
#                     the image they built, whatever retags the name meanwhile)
# Uses only what macOS and Linux both have (bash, python3, mkdir, awk, date).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
PLATFORM=${PLATFORM-linux/amd64}
VERSION=$(awk -F'"' '/^version *=/ {print $2; exit}' pyproject.toml)
IMAGE_PREFIX=${IMAGE_PREFIX:-infer-distill}
WHEELS_PORT=${WHEELS_PORT:-8799}
MOTO_VERSION=${MOTO_VERSION:-5.2.5}
if [ -z "${DOCKER_BUILDKIT:-}" ]; then
    if docker buildx version >/dev/null 2>&1; then DOCKER_BUILDKIT=1; else DOCKER_BUILDKIT=0; fi
fi
export DOCKER_BUILDKIT
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --platform) [ $# -ge 2 ] || { echo "--platform needs a value, e.g. linux/amd64" >&2; exit 2; }; PLATFORM=$2; shift 2 ;;
        --platform=*) PLATFORM=${1#--platform=}; shift ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(cpu)

docker info >/dev/null 2>&1 || { echo "no Docker daemon answers: start one (as root: docker/dockerd-loopback.sh)" >&2; exit 1; }

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$BASE_IMAGE" = infer-distill-base:bookworm-py3.11 ]; then
        BASE_IMAGE=$BASE_IMAGE bash docker/build-base.sh
    else
        docker pull ${PLATFORM:+--platform "$PLATFORM"} "$BASE_IMAGE"
    fi
fi

# --- local wheels (and the CA pip needs) from the build host, served on loopback ----------------
# The build's RUN steps reach 127.0.0.1 through --network host. Nothing is copied into the
# build context, and nothing served stays in an image.
WHEELS_URL=""
PIP_CERT_URL=""
SERVER_PID=""
LOCK=${TMPDIR:-/tmp}/infer-distill-docker-build.lock.d
stop_server() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ -f "$LOCK/pid" ] && [ "$(cat "$LOCK/pid")" = $$ ]; then rm -rf "$LOCK"; fi
}
trap stop_server EXIT
# One serving build at a time on a machine: they share the wheel server's port. mkdir is atomic;
# a lock whose owner is gone (killed) is taken over.
take_lock() {
    local waited=0 owner
    until mkdir "$LOCK" 2>/dev/null; do
        owner=$(cat "$LOCK/pid" 2>/dev/null || true)
        if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then rm -rf "$LOCK"; continue; fi
        # (no pid yet: its owner is between mkdir and writing it, or died there)
        if [ -z "$owner" ] && [ "$waited" -ge 5 ]; then rm -rf "$LOCK"; continue; fi
        [ "$waited" -eq 0 ] && echo "waiting for another build to finish (lock $LOCK${owner:+, pid $owner})"
        waited=$((waited + 1))
        sleep 1
    done
    echo $$ >"$LOCK/pid"
}
start_server() {
    local dirs=${WHEEL_DIRS-} stage=${TMPDIR:-/tmp}/infer-distill-wheels d f n=0
    local cert=${PIP_CERT:-${SSL_CERT_FILE:-}}
    rm -rf "$stage"; mkdir -p "$stage/wheels"
    for d in $dirs; do
        [ -d "$d" ] || echo "warning: WHEEL_DIRS names $d, which is not a directory" >&2
        for f in "$d"/torch-*.whl "$d"/torchvision-*.whl "$d"/nvidia_*.whl "$d"/cuda_*.whl "$d"/triton-*.whl; do
            [ -f "$f" ] || continue
            ln -sf "$f" "$stage/wheels/$(basename "$f")"; n=$((n + 1))
        done
    done
    # A CA bundle that pip on the build host is told to use (e.g. a TLS-intercepting proxy's).
    [ -n "$cert" ] && [ -f "$cert" ] && ln -sf "$cert" "$stage/ca-bundle.crt"
    [ "$n" -gt 0 ] || [ -e "$stage/ca-bundle.crt" ] || return 0
    take_lock
    python3 -m http.server "$WHEELS_PORT" --bind 127.0.0.1 --directory "$stage" >/dev/null 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$WHEELS_PORT/', timeout=1)" 2>/dev/null; then
            [ "$n" -gt 0 ] && WHEELS_URL="http://127.0.0.1:$WHEELS_PORT/wheels/"
            [ -e "$stage/ca-bundle.crt" ] && PIP_CERT_URL="http://127.0.0.1:$WHEELS_PORT/ca-bundle.crt"
            echo "serving on 127.0.0.1:$WHEELS_PORT: $n local wheels${dirs:+ (from $dirs)}${PIP_CERT_URL:+, CA bundle $cert for pip}"
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
    # The RUN steps reach the wheel server on the host's loopback; nothing else needs the host network.
    [ -z "$SERVER_PID" ] || set -- "$@" --network host
    [ "$DOCKER_BUILDKIT" = 1 ] || set -- "$@" --force-rm
    [ -z "$PLATFORM" ] || set -- "$@" --platform "$PLATFORM"
    log="${TMPDIR:-/tmp}/infer-distill-build-${tag//[:\/]/_}.log"
    echo "== building $tag (${PLATFORM:-native platform}, from $BASE_IMAGE, $([ "$DOCKER_BUILDKIT" = 1 ] && echo BuildKit || echo legacy builder))"
    # shellcheck disable=SC2086
    docker build -f "$file" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_CERT_URL="$PIP_CERT_URL" "$@" ${DOCKER_BUILD_ARGS:-} -t "$tag" "$context" \
        >"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "build of $tag failed; full log: $log" >&2; exit 1; }
    size=$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}')
    echo "built $tag in $(( $(date +%s) - started ))s, $size"
}

for target in "${targets[@]}"; do
    case "$target" in
        cpu|cuda)
            index=${TORCH_INDEX_URL-}
            if [ -z "$index" ] && [ "$target" = cpu ] && ! ls "${TMPDIR:-/tmp}"/infer-distill-wheels/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
                index=https://download.pytorch.org/whl/cpu
            fi
            build "$target" "$IMAGE_PREFIX:$target" docker/Dockerfile . --build-arg VARIANT="$target" \
                --build-arg TORCH_FIND_LINKS="$WHEELS_URL" --build-arg TORCH_INDEX_URL="$index" \
                --build-arg TORCH_CUDA="$([ "$target" = cuda ] && echo "${TORCH_CUDA-}")" -t "$IMAGE_PREFIX:$VERSION-$target"
            ;;
        moto)
            build moto "$IMAGE_PREFIX-moto:$MOTO_VERSION" docker/moto.Dockerfile docker --build-arg MOTO_VERSION="$MOTO_VERSION"
            ;;
        *) echo "unknown target '$target': use cpu, cuda or moto" >&2; exit 2 ;;
    esac
done
