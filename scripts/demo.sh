#!/usr/bin/env bash
# vesper's main job, end to end on the embedded default: installs what is missing (Debian
# packages, npm packages), builds a Debian 12 guest image from Debian's archive (systemd, sshd,
# nginx, the vesper-agent package, a service that crashes; cached), starts a local libvirtd,
# boots the guest, attaches probes from the host, causes real failures in the guest through
# its sshd and prints what the host was told. `--distro debian13` takes Debian 13 instead;
# `--busybox` the small busybox guest (fast); `--host-mode` runs the agent on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
if [ "${1:-}" = "--host-mode" ]; then
  shift
  exec node_modules/.bin/tsx test/rigs/demo/host-mode.ts "$@"
fi
if [ "${1:-}" = "--busybox" ]; then
  shift
  exec node_modules/.bin/tsx test/rigs/demo/vm-demo.ts "$@"
fi
exec node_modules/.bin/tsx test/rigs/demo/distro-demo.ts "$@"
