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
