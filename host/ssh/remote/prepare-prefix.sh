#!/bin/sh
# Makes PREFIX vesper's before install pushes into it: bin/ created, the owner mark set (so
# uninstall may remove the prefix whole), and temporary files of an interrupted install removed,
# there and (with systemd) beside the unit.
# Usage: sh -s -- PREFIX OWNER_MARK TMP_GLOB SYSTEMD(1|0)
prefix=$1 owner_mark=$2 tmp_glob=$3 systemd=$4

mkdir -p "$prefix/bin" &&
  chmod 0755 "$prefix" &&
  touch "$prefix/$owner_mark" &&
  find "$prefix" -maxdepth 2 -name "$tmp_glob" -exec rm -f {} + &&
  if [ "$systemd" = 1 ]; then find /etc/systemd/system -maxdepth 1 -name "$tmp_glob" -exec rm -f {} +; else true; fi
