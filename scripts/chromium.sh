#!/usr/bin/env bash
# Debian 12's chromium, the browser the HTML report of `vesper analyze` is checked in
# (test/acceptance/analyze-html.test.ts), installed only when missing.
#
#   scripts/chromium.sh install   apt-get chromium (without recommends) when it is missing; run as root
#   scripts/chromium.sh path      print the browser's binary
#
# Exit status: 0 done, 1 failed, 2 usage, 3 (path) chromium is not installed, 100 the Debian
# package could not be installed (no network, no such package). Progress and errors go to stderr.
set -euo pipefail
# shellcheck source=lib/debs.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/debs.sh"

DEBS=(chromium)
# Debian's launcher: a wrapper that reads /etc/chromium.d before it runs /usr/lib/chromium/chromium.
BINARY=/usr/bin/chromium

log() { echo "chromium.sh: $*" >&2; }

usage() {
  sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

install_debs() {
  need_debs "${DEBS[@]}" || return 0
  local missing=("${MISSING[@]}")
  if [ "$(id -u)" != 0 ]; then
    log "error: ${missing[*]} missing and installing needs root"
    exit 1
  fi
  log "packages: installing ${missing[*]}"
  if ! apt_install "${missing[@]}"; then
    log "error: could not install ${missing[*]}"
    exit 100
  fi
  log "packages: installed"
}

case "${1:-}" in
install)
  install_debs
  ;;
path)
  if [ -x "$BINARY" ]; then
    echo "$BINARY"
  else
    log "$BINARY not found: run scripts/chromium.sh install"
    exit 3
  fi
  ;;
*) usage ;;
esac
