#!/bin/sh
# Stops every process running this prefix's bundle (agents and relays): TERM, then KILL after
# 10 s. Prints `stopped=PIDS` when there were any, and `stuck=PIDS` for those still there 5 s
# after SIGKILL (a task in uninterruptible sleep; the kernel lets go of it in its own time).
# Usage: sh -s -- BUNDLE (its absolute path)
bundle=$1

pids=""
for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  # argv[1] is the bundle: the agent and its relays (node BUNDLE ...), nothing else
  tr '\0' '\n' < "$d/cmdline" 2>/dev/null | sed -n 2p | grep -qxF "$bundle" && pids="$pids ${d#/proc/}"
done
[ -z "$pids" ] && exit 0
echo "stopped=$pids"
# $pids and $alive are lists of pids: split on purpose.
# shellcheck disable=SC2086
kill -TERM $pids 2>/dev/null
i=0
while [ $i -lt 100 ]; do
  alive=""
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
  [ -z "$alive" ] && exit 0
  sleep 0.1; i=$((i+1))
done
# shellcheck disable=SC2086
kill -KILL $alive 2>/dev/null
i=0
while [ $i -lt 50 ]; do
  stuck=""
  for p in $alive; do kill -0 "$p" 2>/dev/null && stuck="$stuck $p"; done
  [ -z "$stuck" ] && exit 0
  sleep 0.1; i=$((i+1))
done
echo "stuck=$stuck"
true
