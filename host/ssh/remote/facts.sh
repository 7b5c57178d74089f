#!/bin/sh
# What `vesper agent install|uninstall|status` learn about a target, one key=value line each
# (host/ssh/target-facts.ts reads them). A key is absent when its test fails.
# Usage: sh -s -- PREFIX RUN_DIR UNIT UNIT_FILE OWNER_MARK MARKER FILE... (FILE: under PREFIX)
prefix=$1 run_dir=$2 unit=$3 unit_file=$4 owner_mark=$5 marker=$6
shift 6

# A present file always gets a line; its sha256 when the target has sha256sum (else empty,
# and install pushes it again).
sha_line() { # KEY PATH
  [ -f "$2" ] && echo "sha:$1=$(command -v sha256sum >/dev/null 2>&1 && sha256sum < "$2" | cut -d' ' -f1)"
}

echo "uid=$(id -u)"
echo "arch=$(uname -m)"
n=$(command -v node 2>/dev/null)
echo "node=$n"
[ -n "$n" ] && echo "nodever=$("$n" -p process.versions.node 2>/dev/null)"
[ -d /run/systemd/system ] && echo systemd=1
command -v sha256sum >/dev/null 2>&1 && echo sha256sum=1
[ -n "$(ls -A "$prefix" 2>/dev/null)" ] && echo prefix_used=1
[ -f "$prefix/$owner_mark" ] && echo owned=1
for f in "$@"; do sha_line "$f" "$prefix/$f"; done
sha_line unit "$unit_file"
[ -f "$prefix/$marker" ] && echo "record=$(tr -d '\n' < "$prefix/$marker")"
pid=$(cat "$run_dir/agent.pid" 2>/dev/null)
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q vesper-agent "/proc/$pid/cmdline" 2>/dev/null && echo "pid=$pid"
[ -d /run/systemd/system ] && echo "unit_active=$(systemctl is-active "$unit" 2>/dev/null)" && echo "unit_enabled=$(systemctl is-enabled "$unit" 2>/dev/null)"
true
