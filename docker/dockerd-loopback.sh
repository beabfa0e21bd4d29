#!/usr/bin/env bash
# Make sure a Docker daemon answers; start one OFF the network if none does.
#
#   docker/dockerd-loopback.sh        # idempotent: returns at once if `docker info` works
#   docker/dockerd-loopback.sh stop   # stops the daemon this script started (and only that one)
#
# For machines without systemd (CI, dev sandboxes): a root dockerd with no bridge and no
# iptables rules, so containers can only use `network_mode: host` and reach 127.0.0.1 -- the
# compose dry run uses nothing else. It keeps its own data root (image cache survives between
# runs), exec root and pidfile, and listens on the default socket, so plain `docker` finds it.
# Settings (environment): INFER_DOCKER_DATA_ROOT, INFER_DOCKER_LOG, INFER_DOCKER_WAIT_S.
set -euo pipefail

DATA_ROOT=${INFER_DOCKER_DATA_ROOT:-/var/lib/infer-distill-docker}
EXEC_ROOT=/run/infer-distill-docker
PIDFILE=/run/infer-distill-dockerd.pid
LOG=${INFER_DOCKER_LOG:-/var/log/infer-distill-dockerd.log}
WAIT_S=${INFER_DOCKER_WAIT_S:-60}

if [ "${1:-}" = stop ]; then
    [ -f "$PIDFILE" ] || exit 0
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || { rm -f "$PIDFILE"; exit 0; }
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
    echo "dockerd ($pid) still running 30s after SIGTERM" >&2
    exit 1
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ -n "${DOCKER_HOST:-}" ]; then
    echo "DOCKER_HOST=$DOCKER_HOST is set but no daemon answers there; not starting a local one" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "no Docker daemon answers and this is not root: start one (or get access to its socket)" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null; then
    echo "no Docker daemon answers and dockerd is not installed (apt-get install docker.io)" >&2
    exit 1
fi

# A pidfile whose process is gone (machine reused) would make dockerd refuse to start.
if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    rm -f "$PIDFILE"
fi
if [ ! -f "$PIDFILE" ]; then
    mkdir -p "$DATA_ROOT" "$(dirname "$LOG")"
    # setsid + nohup: the daemon outlives the shell (and the test session) that started it.
    setsid nohup dockerd \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
        --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" --pidfile "$PIDFILE" \
        --host unix:///var/run/docker.sock \
        >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$((WAIT_S * 2))"); do
    if docker info >/dev/null 2>&1; then
        exit 0
    fi
    sleep 0.5
done
echo "dockerd did not answer within ${WAIT_S}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2
exit 1
