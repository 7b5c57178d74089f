#!/usr/bin/env bash
# Brings up the host's libvirt layer on Debian 12 without systemd as PID 1, idempotently.
#
#   scripts/host-setup.sh [start]   install packages, prepare dirs/user/config, start daemons
#   scripts/host-setup.sh stop      stop libvirtd, then virtlogd
#   scripts/host-setup.sh status    report daemons and whether qemu:///system answers (exit 3 if not)
#
# Exit status: 0 done, 1 failed, 100 the Debian packages could not be installed.
#
# Debian 12 ships the monolithic libvirtd 9.0. Its packaging expects systemd to create runtime
# directories and start virtlogd via socket activation; without systemd we do both by hand.
# Everything is checked first and only done when missing, so a second run changes nothing.
# Progress goes to stderr.
set -euo pipefail
# shellcheck source=lib/debs.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/debs.sh"

URI=qemu:///system
DEBS=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  busybox-static cpio xz-utils zstd stress-ng e2fsprogs)
DIRS=(/var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt /run/libvirt)
QEMU_CONF=/etc/libvirt/qemu.conf
READY_TIMEOUT=30 # s; the first call probes QEMU's capabilities, ~8 s here
STOP_TIMEOUT=10  # s of SIGTERM grace before SIGKILL

log() { echo "host-setup: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# The running daemon's pid, or nothing. The pidfile is the daemon's own record; pgrep -x covers a
# daemon started some other way (or a stale pidfile). /proc/PID/comm guards against pid reuse.
pid_of() {
  local name=$1 pid
  if [ -r "/run/$name.pid" ]; then
    pid=$(tr -dc '0-9' <"/run/$name.pid")
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      echo "$pid"
      return
    fi
  fi
  pgrep -x -o "$name" || true
}

install_debs() {
  need_debs "${DEBS[@]}" || return 0
  local missing=("${MISSING[@]}")
  log "packages: installing ${missing[*]}"
  # Exit 100 (apt's own failure status) tells callers "could not install", e.g. no network.
  if ! apt_install "${missing[@]}"; then
    log "error: could not install ${missing[*]}"
    exit 100
  fi
}

prepare_dirs() {
  local d
  for d in "${DIRS[@]}"; do
    [ -d "$d" ] || {
      log "mkdir $d"
      mkdir -p "$d"
    }
  done
}

# libvirt's QEMU driver looks these up at start-up even when qemu.conf says root; the package's
# postinst normally creates them.
prepare_user() {
  if ! getent group libvirt-qemu >/dev/null; then
    log "groupadd libvirt-qemu"
    groupadd --system libvirt-qemu
  fi
  if ! getent passwd libvirt-qemu >/dev/null; then
    log "useradd libvirt-qemu"
    useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
      --shell /usr/sbin/nologin libvirt-qemu
  fi
}

# Sets `key = value` in qemu.conf, leaving every other line alone. Returns 0 if it changed the file.
set_conf() {
  local key=$1 value=$2 want
  want="$key = $value"
  if grep -qxF "$want" "$QEMU_CONF"; then return 1; fi
  if grep -qE "^[[:space:]]*$key[[:space:]]*=" "$QEMU_CONF"; then
    sed -i -E "s|^[[:space:]]*$key[[:space:]]*=.*|$want|" "$QEMU_CONF"
  else
    printf '%s\n' "$want" >>"$QEMU_CONF"
  fi
  log "$QEMU_CONF: $want"
}

# QEMU runs as root with no security driver: this host runs as root in a container-like setup
# where neither the libvirt-qemu user nor AppArmor/SELinux confinement is usable.
configure_qemu() {
  local changed=1
  mkdir -p "$(dirname "$QEMU_CONF")"
  [ -e "$QEMU_CONF" ] || : >"$QEMU_CONF"
  set_conf user '"root"' && changed=0
  set_conf group '"root"' && changed=0
  set_conf security_driver '"none"' && changed=0
  return $changed
}

wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT)) t0=$SECONDS
  until timeout 15 virsh -c "$URI" version >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "libvirtd did not answer on $URI within ${READY_TIMEOUT}s"
    sleep 0.5
  done
  log "$URI answers (waited $((SECONDS - t0))s)"
}

stop_daemon() {
  local name=$1 pid deadline
  pid=$(pid_of "$name")
  if [ -z "$pid" ]; then
    log "$name: not running"
    return
  fi
  log "$name: SIGTERM $pid"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after ${STOP_TIMEOUT}s, SIGKILL $pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  log "$name: stopped"
}

start() {
  local pid conf_changed=0
  install_debs
  prepare_dirs
  prepare_user
  configure_qemu && conf_changed=1

  pid=$(pid_of virtlogd)
  if [ -n "$pid" ]; then
    log "virtlogd: already running ($pid), nothing to do"
  else
    log "virtlogd: starting"
    virtlogd -d
  fi

  pid=$(pid_of libvirtd)
  if [ -n "$pid" ] && ((conf_changed)); then
    # qemu.conf is read only at start-up: a running daemon would keep the old settings.
    log "libvirtd: running ($pid) with an old qemu.conf, restarting"
    stop_daemon libvirtd
    pid=
  fi
  if [ -n "$pid" ]; then
    log "libvirtd: already running ($pid), nothing to do"
  else
    log "libvirtd: starting"
    libvirtd -d
  fi
  wait_ready
}

status() {
  local name pid rc=0
  for name in virtlogd libvirtd; do
    pid=$(pid_of "$name")
    if [ -n "$pid" ]; then log "$name: running ($pid)"; else
      log "$name: not running"
      rc=3
    fi
  done
  if timeout 15 virsh -c "$URI" version >&2 2>/dev/null; then log "$URI: answers"; else
    log "$URI: does not answer"
    rc=3
  fi
  return $rc
}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts system daemons)"
case "${1:-start}" in
start) start ;;
stop)
  stop_daemon libvirtd
  stop_daemon virtlogd
  ;;
status) status ;;
*) die "usage: $0 [start|stop|status]" ;;
esac
