#!/bin/sh
# vesper's Pacemaker alert agent: hands each alert to vesperd as an event of the `pacemaker`
# plugin (`vesper alert-pacemaker` reads the CRM_alert_* variables Pacemaker sets).
#
# Install: install -D -m 0755 host/pacemaker/alert-agent.sh /usr/lib/vesper/alert-agent.sh
# Register it once (the CIB is the whole cluster's), with no recipient or one: Pacemaker runs
# the agent once per recipient, and every run would be an event:
#   pcs alert create id=vesper path=/usr/lib/vesper/alert-agent.sh \
#     meta timestamp-format='%Y-%m-%d %H:%M:%S.%06N' timeout=30s
# or, without pcs (a CIB without an <alerts> section yet; with one, --scope alerts and the
# <alert> element alone):
#   cibadmin --create --scope configuration --xml-text '<alerts>
#     <alert id="vesper" path="/usr/lib/vesper/alert-agent.sh"><meta_attributes id="vesper-meta">
#       <nvpair id="vesper-ts" name="timestamp-format" value="%Y-%m-%d %H:%M:%S.%06N"/>
#       <nvpair id="vesper-timeout" name="timeout" value="30s"/></meta_attributes></alert></alerts>'
#
# Pacemaker runs it as hacluster. vesperd's alert socket (config pacemaker.alert_socket,
# default /run/vesper-pacemaker/alert.sock) belongs to the group haclient, hacluster's, and
# takes alerts only, so hacluster needs no other rights. The vesper command, in this order:
#   $VESPER_CLI              a path to it (an alert instance attribute: pcs alert create ...
#                            options VESPER_CLI=/opt/vesper/bin/vesper)
#   ../../dist/host/vesper-alert.mjs, else ../../dist/host/vesper.mjs, next to this script's
#                            real path (a checkout that was built), run with $VESPER_NODE
#                            (default: node in PATH) if there is one; vesper-alert.mjs is the
#                            alert sender alone, which starts in a fraction of the CLI's time
#   vesper in PATH           (/usr/bin/vesper when installed)
# Other instance attributes it honours: VESPER_SOCKET (the alert socket, if not the default),
# VESPER_ALERT_TIMEOUT (seconds; default 20) and VESPER_ALERT_LOG (a file hacluster may
# write: one line per alert, sent or not, with how long it took).
#
# Pacemaker does not wait for alert agents before it acts, but it starts all of an event's
# alert agents at once while it recovers the resource, and kills each one at its `timeout`
# meta-attribute (30s by default). On a loaded host a Node process can take seconds just to
# start, so this agent allows VESPER_ALERT_TIMEOUT seconds, starting included, which must stay
# below Pacemaker's timeout. A failure goes to syslog (tag vesper-alert), stderr and
# VESPER_ALERT_LOG, and the exit status is non-zero so that Pacemaker logs it too.

timeout_s=${VESPER_ALERT_TIMEOUT:-20}
t0=
[ -z "${VESPER_ALERT_LOG:-}" ] || t0=$(date +%s.%N 2>/dev/null)

log() {
  logger -t vesper-alert -p daemon.warning -- "$*" 2>/dev/null
  echo "vesper-alert: $*" >&2
}

# One line per alert in VESPER_ALERT_LOG, when set: when, which alert, how long, the outcome.
record() {
  [ -n "${VESPER_ALERT_LOG:-}" ] || return 0
  t1=$(date +%s.%N 2>/dev/null)
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { if (a != "" && b != "") printf "%.2f", b - a; else print "?" }' 2>/dev/null)
  printf '%s seq=%s kind=%s task=%s rsc=%s node=%s rc=%s status=%s took=%ss: %s\n' \
    "$(date '+%Y-%m-%dT%H:%M:%S.%N')" "${CRM_alert_node_sequence:--}" "${CRM_alert_kind:--}" "${CRM_alert_task:--}" \
    "${CRM_alert_rsc:--}" "${CRM_alert_node:--}" "${CRM_alert_rc:--}" "${CRM_alert_status:--}" "$took" "$*" \
    >>"$VESPER_ALERT_LOG" 2>/dev/null
}

if [ -z "${CRM_alert_kind:-}" ]; then
  echo "$0: not run by Pacemaker (CRM_alert_kind is not set); see the comments at the top for how to register it" >&2
  exit 0
fi
case $timeout_s in
'' | *[!0-9]*) timeout_s=5 ;;
esac

self=$(readlink -f -- "$0" 2>/dev/null) || self=$0
here=$(dirname -- "$self")
verb=alert-pacemaker
if [ -n "${VESPER_CLI:-}" ]; then
  set -- "$VESPER_CLI"
elif [ -f "$here/host/vesper-alert.mjs" ] && [ -x "$here/node" ]; then
  # installed by the vesper package: /usr/lib/vesper/alert-agent.sh beside the small sender and
  # the runtime shipped with it (not the whole CLI: the alert must be quick)
  set -- "$here/node" "$here/host/vesper-alert.mjs"
  verb=
elif [ -f "$here/../../dist/host/vesper-alert.mjs" ] && command -v "${VESPER_NODE:-node}" >/dev/null 2>&1; then
  set -- "${VESPER_NODE:-node}" "$here/../../dist/host/vesper-alert.mjs"
  verb=
elif [ -f "$here/../../dist/host/vesper.mjs" ] && command -v "${VESPER_NODE:-node}" >/dev/null 2>&1; then
  set -- "${VESPER_NODE:-node}" "$here/../../dist/host/vesper.mjs"
elif command -v vesper >/dev/null 2>&1; then
  set -- vesper
else
  msg="cannot find the vesper command (set VESPER_CLI, or put vesper in PATH); ${CRM_alert_kind} alert for ${CRM_alert_rsc:-${CRM_alert_node:-?}} not sent"
  log "$msg"
  record "$msg"
  exit 1
fi

# The CLI bounds itself too; timeout(1) also covers a node that never gets that far.
if command -v timeout >/dev/null 2>&1; then
  set -- timeout -k 1 "$((timeout_s + 1))" "$@"
fi
out=$("$@" $verb --timeout "${timeout_s}s" 2>&1)
rc=$?
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 124 ] && out="no answer within $((timeout_s + 1))s"
  log "${CRM_alert_kind} alert (task ${CRM_alert_task:--}, resource ${CRM_alert_rsc:--}, node ${CRM_alert_node:--}) not sent: $out"
  record "not sent (exit $rc): $out"
else
  record "sent: $out"
fi
exit "$rc"
