#!/bin/sh
# Removes the prefix (only when it carries vesper's owner mark) and the agent's files in the
# run dir, then the run dir when nothing else is in it. Says what it did: prefix=1, rundir=1,
# and left=NAME for each file the run dir still holds.
# Usage: sh -s -- PREFIX OWNER_MARK RUN_DIR
prefix=$1 owner_mark=$2 r=$3

[ -f "$prefix/$owner_mark" ] && rm -rf "$prefix" && echo prefix=1
[ -d "$r" ] && rm -f "$r/agent.sock" "$r/agent.pid" "$r/agent.log" "$r/run-state" && echo rundir_seen=1 && rmdir "$r" 2>/dev/null && echo rundir=1
# Names for the report only (one a line), not for handling files.
# shellcheck disable=SC2012
[ -d "$r" ] && ls -A "$r" | sed 's/^/left=/'
true
