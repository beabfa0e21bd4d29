# A real S3 server (moto in server mode) for the compose test override (compose.test.yaml) and
# for dry runs where the MinIO image cannot be pulled (compose.moto.yaml).
#   docker/build.sh moto
# Built from the same base as the project image (BASE_IMAGE); its context is docker/ (nothing in it
# is copied). Keep MOTO_VERSION within the project's dev pin (moto[server]>=5,<6).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG MOTO_VERSION=5.2.5
# As in docker/Dockerfile: a CA bundle pip trusts during this step only.
ARG PIP_CERT_URL=
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HOME=/tmp
RUN set -eu; \
    python3 -m venv /opt/venv; \
    if [ -n "$PIP_CERT_URL" ]; then \
      python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], "/tmp/pip-ca.crt")' "$PIP_CERT_URL"; \
      export PIP_CERT=/tmp/pip-ca.crt; \
    fi; \
    pip install --quiet "moto[server]==${MOTO_VERSION}"; \
    rm -f /tmp/pip-ca.crt; \
    moto_server --help >/dev/null
USER 1000:1000
# Every bucket and object lives in memory and is gone when the container stops.
ENTRYPOINT ["moto_server"]
CMD ["-H", "127.0.0.1", "-p", "9000"]
