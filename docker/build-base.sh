#!/usr/bin/env bash
# Build the local base image (minimal Debian bookworm + Python 3.11) with debootstrap and
# `docker import`, for machines that cannot pull from a registry.
#
#   docker/build-base.sh            # skips at once if the tag exists
#   docker/build-base.sh --force    # rebuild it
#
# Where you can pull images, `--build-arg BASE_IMAGE=python:3.11-slim-bookworm` on
# docker/build.sh skips this script entirely (see docker/README.md).
#
# Environment: BASE_IMAGE (tag, default infer-distill-base:bookworm-py3.11), DEBIAN_MIRROR
# (default: the mirror this machine's apt uses, else deb.debian.org), DEBOOTSTRAP_CACHE
# (downloaded .debs, kept between runs). Needs root and the debootstrap package.
set -euo pipefail

TAG=${BASE_IMAGE:-infer-distill-base:bookworm-py3.11}
SUITE=bookworm
CACHE=${DEBOOTSTRAP_CACHE:-/var/cache/infer-distill-debootstrap}

if [ "${1:-}" != "--force" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG exists; skipping (--force rebuilds it)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "install debootstrap first (apt-get install debootstrap)" >&2; exit 1; }

# The mirror this machine's apt already uses (deb822 .sources or one-line sources.list).
mirror_from_apt() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '/^URIs:/ {print $2}' "$f" | grep -v -- '-security' | grep '/debian/\?$' | head -n1 && return
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f" \
            | grep -v -- '-security' | grep '/debian/\?$' | head -n1 && return
    done
}
MIRROR=${DEBIAN_MIRROR:-$(mirror_from_apt || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}
SECURITY=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

ROOTFS=$(mktemp -d /var/tmp/infer-distill-rootfs.XXXXXX)
cleanup() {
    # debootstrap may leave proc/sys mounted inside the tree if it fails half way.
    for m in proc sys dev/pts dev; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS" "$ROOTFS.log"
}
trap cleanup EXIT

started=$(date +%s)
mkdir -p "$CACHE"
echo "debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --cache-dir="$CACHE" \
    --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"

# apt sources for images built FROM this one (security updates included), then the updates.
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SOURCES
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
chroot "$ROOTFS" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get -y -qq upgrade && apt-get clean' >"$ROOTFS.log" 2>&1 \
    || { tail -n 10 "$ROOTFS.log" >&2; echo "warning: could not apply $SUITE updates; the base image has the release packages" >&2; }
rm -f "$ROOTFS.log"
# Keep the image small and free of this machine's details.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"

tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + python3 from $MIRROR" \
    - "$TAG" >/dev/null
echo "built $TAG in $(( $(date +%s) - started ))s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
