#!/usr/bin/env bash
# Installs what vesper needs on a fresh Debian 12 machine, idempotently: Node packages,
# generated protocol code, and the bundled agent and probe modules.
set -euo pipefail
cd "$(dirname "$0")/.."
need_debs=()
# dpkg-deb, strip, readelf: npm run package; mmdebstrap, curl: the package test's Debian 12 root;
# mmdebstrap, mkfs.ext4, qemu-img, ssh, ssh-keygen: the Debian guest images and their rig
# (test/rigs/distro); shellcheck: the tests that keep the shell scripts clean.
for tool in taskset:util-linux mount:mount dpkg-deb:dpkg strip:binutils readelf:binutils mmdebstrap:mmdebstrap curl:curl \
  mkfs.ext4:e2fsprogs qemu-img:qemu-utils ssh:openssh-client ssh-keygen:openssh-client shellcheck:shellcheck; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_debs+=("${tool##*:}")
done
# The libvirt binding (@unraid/libvirt) compiles against libvirt's headers during npm ci.
for pkg in libvirt-dev pkg-config g++ make python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_debs+=("$pkg")
done
if ((${#need_debs[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}"
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund >&2
fi
npm run --silent build >&2
