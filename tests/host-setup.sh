#!/usr/bin/env bash
# Make this machine able to run the suite: a Docker engine with BuildKit, compose v2, debootstrap (local base
# images when no registry answers) and Chromium (the browser test). Skips what is already there; needs root
# (or sudo) only for what it installs.
set -euo pipefail

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
packages=()
command -v dockerd >/dev/null || packages+=(docker.io)
command -v debootstrap >/dev/null || packages+=(debootstrap)
command -v chromium >/dev/null || packages+=(chromium chromium-driver)
# qemu-x86_64-static: the ktransformers image's CPU kernels under older CPU models (tests/integration).
command -v qemu-x86_64-static >/dev/null || packages+=(qemu-user-static)
if [ ${#packages[@]} -gt 0 ]; then
  echo "host-setup: installing ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "host-setup: starting dockerd (log: /tmp/dockerd.log)"
  $sudo sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 &'
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "host-setup: dockerd did not start, see /tmp/dockerd.log" >&2; exit 1; }
fi
