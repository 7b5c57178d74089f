#!/usr/bin/env bash
# Installs what vesper needs on a fresh Debian 12 machine, idempotently: Node packages,
# generated protocol code, and the bundled agent and probe modules.
set -euo pipefail
cd "$(dirname "$0")/.."
need_debs=()
# dpkg-deb, strip, readelf: npm run package; mmdebstrap, curl: the package test's Debian 12 root;
# mmdebstrap, mkfs.ext4, qemu-img, ssh, ssh-keygen: the Debian guest images and their rig
# (test/rigs/distro); shellcheck: the tests that keep the shell scripts clean; rsyslogd: the export
# sinks' syslog receiver; nats-server (2.9, JetStream): the fleet bus's acceptance test and
# benchmark; ip (iproute2): their network namespaces.
for tool in taskset:util-linux mount:mount dpkg-deb:dpkg strip:binutils readelf:binutils mmdebstrap:mmdebstrap curl:curl \
  mkfs.ext4:e2fsprogs qemu-img:qemu-utils ssh:openssh-client ssh-keygen:openssh-client shellcheck:shellcheck \
  rsyslogd:rsyslog nats-server:nats-server ip:iproute2; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_debs+=("${tool##*:}")
done
# The libvirt binding (@unraid/libvirt) compiles against libvirt's headers during npm ci.
# resource-agents: the real VirtualDomain monitor the guest-service test runs (the Pacemaker rig
# installs it too, but that test may come first).
for pkg in libvirt-dev pkg-config g++ make python3 resource-agents; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_debs+=("$pkg")
done
if ((${#need_debs[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}"
fi
# promtool and prometheus: the metrics test scrapes vesperd with a Prometheus of its own and
# checks the shipped alert rules; amtool (prometheus-alertmanager) checks the documented
# Alertmanager route. The packages' services are never wanted running here: without systemd,
# invoke-rc.d would start them (ports 9090, 9093) unless a policy says no, so one says no for
# the install only when the machine has none.
if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager || status=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ "${status:-0}" = 0 ] || exit "$status"
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund >&2
fi
npm run --silent build >&2
