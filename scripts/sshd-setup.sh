#!/usr/bin/env bash
# Installs OpenSSH's server for vesper's SSH tests and benchmarks, idempotently, without
# starting it: the tests start their own sshd on a loopback port with throwaway keys
# (test/helpers/sshd.ts), and the machine's own sshd, if any, is left alone.
#
# Exit status: 0 ready, 1 failed, 100 the Debian package could not be installed.
set -euo pipefail
# shellcheck source=lib/debs.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/debs.sh"

log() { echo "sshd-setup: $*" >&2; }

[ "$(id -u)" = 0 ] || {
  log "error: must run as root (apt-get)"
  exit 1
}
if need_debs openssh-server; then
  log "packages: installing ${MISSING[*]}"
  apt_install_no_services "${MISSING[@]}" || {
    log "error: could not install ${MISSING[*]}"
    exit 100
  }
  log "packages: installed"
fi
# sshd's privilege separation directory; systemd's tmpfiles would make it.
install -d -m 0755 -o root -g root /run/sshd
command -v /usr/sbin/sshd >/dev/null || {
  log "error: /usr/sbin/sshd missing after the install"
  exit 1
}
