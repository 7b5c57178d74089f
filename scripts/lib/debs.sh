# Debian packages for vesper's set-up scripts (sourced, bash).

# missing_debs PKG...: the packages of the list that are not installed, one per line.
missing_debs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# apt_install PKG...: installs them without recommends; apt-get's status. The lock timeout
# waits (bounded) for another apt run instead of failing at once.
apt_install() {
  apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >&2
}

# need_debs PKG...: sets MISSING to the packages of the list that are not installed and
# returns 0 when there are some; says so (through the sourcing script's log) and returns 1
# when all are there.
need_debs() {
  mapfile -t MISSING < <(missing_debs "$@")
  if ((${#MISSING[@]} == 0)); then
    log "packages: all present"
    return 1
  fi
}

# apt_install_no_services PKG...: apt_install, but no package may start its service (without
# systemd, maintainer scripts fall back to invoke-rc.d, which would). /usr/sbin/policy-rc.d
# exit 101 forbids it; an existing policy-rc.d (Docker images ship one) is put back afterwards,
# byte for byte, whatever happens.
apt_install_no_services() {
  local policy=/usr/sbin/policy-rc.d saved='' rc=0
  if [ -e "$policy" ]; then
    saved=$(mktemp "$policy.vesper-XXXXXX")
    cp -p "$policy" "$saved"
  fi
  # shellcheck disable=SC2064 # expand now: the trap must restore this exact state
  trap "_restore_policy '$policy' '$saved'" EXIT
  printf '#!/bin/sh\n# vesper set-up: no services start during its apt-get install\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  apt_install "$@" || rc=$?
  _restore_policy "$policy" "$saved"
  trap - EXIT
  return "$rc"
}

_restore_policy() {
  local policy=$1 saved=$2
  if [ -n "$saved" ]; then
    [ -e "$saved" ] && mv -f "$saved" "$policy"
  else
    rm -f "$policy"
  fi
}
