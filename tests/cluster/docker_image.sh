#!/usr/bin/env bash
# Build hessian-sweep:latest from docker/Dockerfile for tests/cluster/test_compose.py (`make cluster-docker`).
# As root it installs Debian's docker.io and docker-compose and starts dockerd when no engine runs.
# Where Docker Hub cannot be reached, the Dockerfile's BASE is a local stand-in for python:3.11-slim:
# Debian bookworm (its Python is 3.11) made with debootstrap from the Debian mirror, carrying this
# machine's CA bundle (its registry traffic may pass a TLS-inspecting proxy), with pip allowed
# to install into the system Python as in the official image.
set -euo pipefail
cd "$(dirname "$0")/../.."
log=runs/cluster-docker
mkdir -p "$log"
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then echo "no Docker engine runs and this is not root: start one, then run again" >&2; exit 2; fi
  command -v dockerd >/dev/null && command -v docker-compose >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose >/dev/null; }
  nohup dockerd >"$log/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi
base=python:3.11-slim
if ! timeout 120 docker pull -q "$base" >/dev/null 2>"$log/pull.err"; then
  echo "cannot pull $base ($(tail -1 "$log/pull.err")); making a local base image with debootstrap"
  base=hessian-sweep-base:bookworm-python3.11
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates,procps,wget \
      bookworm "$rootfs" http://deb.debian.org/debian >"$log/debootstrap.log"
    ln -sf python3 "$rootfs/usr/bin/python"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | docker import --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["python3"]' \
      - "$base" >/dev/null
  fi
fi
docker build --build-arg BASE="$base" -f docker/Dockerfile -t hessian-sweep:latest . >"$log/build.log"
echo "built hessian-sweep:latest on $base ($(docker image inspect -f '{{.Size}}' hessian-sweep:latest) bytes)"
