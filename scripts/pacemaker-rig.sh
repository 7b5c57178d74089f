#!/usr/bin/env bash
# A real Pacemaker 2.1 / Corosync 3 cluster on this one machine, for vesper's acceptance tests
# and benchmark. Debian 12, run as root, no systemd needed.
#
#   scripts/pacemaker-rig.sh install                     apt-get the cluster stack when missing
#   scripts/pacemaker-rig.sh start [--nodes 1|2] [--owner PID]
#                                                        fresh cluster, returns once every node is online
#   scripts/pacemaker-rig.sh stop                        stop it and remove everything it made (idempotent)
#   scripts/pacemaker-rig.sh status                      exit 0 if the cluster answers and all nodes are online, 3 if not
#   scripts/pacemaker-rig.sh exec NODE CMD [ARG...]      run CMD (crm_mon, cibadmin, ...) in NODE's context
#
# Exit status: 0 done, 1 failed, 3 (status) not running or not all online, 100 the Debian packages
# could not be installed. Progress and errors go to stderr. `start` prints, on stdout, one line per
# node: the node name, a tab, and the command prefix (possibly empty) that runs a program in that
# node's context; test/rigs/pacemaker/rig.ts reads it.
#
# Nodes are named node1 and node2. Logs are kept after `stop` (overwritten by the next `start`):
#   /var/log/vesper-pcmk-rig/NODE/{corosync,pacemaker}.log, and the daemons' stdout/stderr in *.out.
#
# How two cluster nodes share one kernel (what was found on Debian 12, Pacemaker 2.1.5, Corosync 3.1.7):
# - All of corosync's and pacemaker's IPC (libqb) is abstract unix sockets ("@cib_rw", "@cpg", ...),
#   which belong to a network namespace. So each node's daemons and the CLI tools that talk to them
#   must share that node's network namespace; that alone keeps two nodes' IPC apart. A node with its
#   own network namespace gets a veth pair to its peer with link-local 169.254.88.N addresses
#   that exist only inside those namespaces, and knet runs over it.
# - libqb's shared-memory ring buffers live in /dev/shm, named after server and client pids
#   (qb-SERVERPID-CLIENTPID-...). Client and server must see the same /dev/shm, and without pid
#   namespaces the names cannot collide, so /dev/shm stays the host's.
# - On disk each node needs its own /var/lib/pacemaker (CIB, scheduler inputs), /var/lib/corosync,
#   /etc/corosync, /run/crm, /run/resource-agents (HA_RSCTMP) and /run/corosync.pid (corosync's
#   hard-coded lock file: a second corosync refuses to start while the first holds it). Each node
#   gets a persistent mount namespace (bound to a file, like `ip netns add` does for network
#   namespaces) in which exactly these paths are bind mounts of the node's own copies; everything
#   else (/run/libvirt, /run/vesper, /tmp, ...) stays shared, so resource and alert agents can reach
#   libvirtd and vesperd as they would on a real node. `ip netns exec` alone is not enough: it makes a
#   new, throw-away mount namespace on every call (and only rebinds /etc/netns/NAME/* over /etc),
#   so the CLI tools would not see what the daemons see.
# - ocf:pacemaker:Dummy keeps its state in $HA_VARRUN (default /var/run, shared); the daemons get
#   HA_VARRUN=/run/resource-agents, which is per node, or two nodes would both report it running.
# - A UTS namespace per node makes uname -n equal the node name for the daemons and their agents.
# - The mount points /run/crm, /run/resource-agents and /run/corosync.pid must exist on the host;
#   the ones this script creates it removes again on `stop`.
# - One node needs no network namespace: corosync listens on 127.0.0.1 and the host's own
#   crm_mon, cibadmin, attrd_updater, ... talk to it directly. It still gets the mount namespace, so
#   the host's /var/lib/pacemaker and /run stay untouched. Nothing else may run corosync or
#   pacemakerd on the host meanwhile; `start` refuses if something does.
# - A fresh CIB is seeded before each start with stonith-enabled=false and dc-deadtime=2s: without
#   the latter a node waits ~20 s for a DC before electing itself.
set -euo pipefail
# shellcheck source=lib/debs.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/debs.sh"

DEBS=(corosync pacemaker pacemaker-cli-utils resource-agents iproute2 util-linux)
STATE=/run/vesper-pcmk-rig # namespaces, per-node state; gone after stop (not /run/vesper-pacemaker: vesperd's)
LOGS=/var/log/vesper-pcmk-rig
NETNS_PREFIX=vesper-pcmk-
SUBNET=169.254.88
START_TIMEOUT=${VESPER_PCMK_START_TIMEOUT:-60} # s for all nodes to come online; ~5 s here
PCMK_STOP_TIMEOUT=30                           # s for pacemakerd to stop resources and exit
COROSYNC_STOP_TIMEOUT=10                       # s; ~1-3 s here
MOUNT_POINTS=(/run/crm /run/resource-agents /run/corosync.pid)

log() { echo "pacemaker-rig: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (namespaces, bind mounts, daemons running as hacluster)"; }

# ---------------------------------------------------------------- install

install_debs() {
  need_debs "${DEBS[@]}" || return 0
  local missing=("${MISSING[@]}")
  log "packages: installing ${missing[*]}"
  # Without systemd the maintainer scripts fall back to invoke-rc.d, which would start corosync
  # (with the stock config) and pacemaker; apt_install_no_services forbids that.
  local before rc=0
  before=$(cluster_pids)
  apt_install_no_services "${missing[@]}" || rc=$?
  if ((rc != 0)); then
    log "error: could not install ${missing[*]} (apt-get exit $rc)"
    exit 100
  fi
  # Belt and braces: anything the packages managed to start anyway is stopped again.
  local pid
  for pid in $(cluster_pids); do
    case " $before " in *" $pid "*) continue ;; esac
    log "packages: stopping $(cat "/proc/$pid/comm" 2>/dev/null) (pid $pid) started by the install"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
  done
  log "packages: installed"
}

# ---------------------------------------------------------------- helpers

# Whether pid $1 runs. A zombie does not: the daemons are reparented to PID 1 once `start` exits,
# and a PID 1 that reaps slowly (this machine's: ~1 s) would otherwise stretch every wait.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

# Waits up to $2 s for pid $1 to exit; 1 if it is still there.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while alive "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# pgrep matches at most 15 characters of a name, so no alternation of whole names here.
cluster_pids() {
  local pid out=()
  for pid in $(pgrep -x corosync || true) $(pgrep -x pacemakerd || true); do
    alive "$pid" && out+=("$pid")
  done
  echo "${out[*]}"
}

nodes() { cat "$STATE/nodes" 2>/dev/null || true; }
netns_of() { echo "$NETNS_PREFIX$1"; }

# The command prefix (one word a line) that puts a program into NODE's namespaces.
daemon_prefix() {
  local n=$1 d=$STATE/$1
  echo nsenter
  echo "--mount=$d/mnt"
  echo "--uts=$d/uts"
  [ -e "/run/netns/$(netns_of "$n")" ] && echo "--net=/run/netns/$(netns_of "$n")"
  echo --
}

# CLI tools need only the node's network namespace (their IPC), but get its mount namespace too so
# they see the node's files. With one node that is the host itself: the host's tools talk to it.
cli_prefix() {
  local n=$1
  [ -e "/run/netns/$(netns_of "$n")" ] || return 0
  daemon_prefix "$n"
}

in_node() {
  local n=$1 prefix
  shift
  mapfile -t prefix < <(cli_prefix "$n")
  "${prefix[@]}" "$@"
}

# Pid (from our own record) if it is alive and still the program we started.
live_pid() {
  local file=$1 comm=$2 pid
  [ -r "$file" ] || return 0
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && alive "$pid" && echo "$pid"
  return 0
}

# Pids of every process inside a node's mount namespace: the daemons, their agents, anything else.
pids_in_ns() {
  local nsfile=$1 ino p
  ino=$(stat -L -c %i "$nsfile" 2>/dev/null) || return 0
  # The mount namespace file is an nsfs bind mount only while it is mounted; otherwise the inode
  # is that of a plain file and matches nothing.
  mountpoint -q "$nsfile" || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "mnt:[$ino]" ] && alive "${p#/proc/}" && echo "${p#/proc/}"
  done
  return 0
}

# "node1 online\nnode2 offline" as seen by NODE's cluster stack, or nothing if it does not answer.
online_view() {
  local n=$1 xml
  xml=$(in_node "$n" timeout 10 crm_mon -1 --output-as=xml 2>/dev/null) || return 0
  grep -o '<node name="[^"]*" id="[^"]*" online="[a-z]*"' <<<"$xml" |
    sed -E 's/<node name="([^"]*)".* online="([a-z]*)"/\1 \2/' || true
}

all_online() {
  local n m view
  for n in $(nodes); do
    view=$(online_view "$n")
    for m in $(nodes); do
      grep -qx "$m true" <<<"$view" || return 1
    done
  done
}

tail_logs() {
  local n f
  for n in $(nodes); do
    for f in "$LOGS/$n"/*.out "$LOGS/$n/corosync.log" "$LOGS/$n/pacemaker.log"; do
      [ -s "$f" ] || continue
      log "---- last lines of $f"
      tail -n 15 "$f" | sed 's/^/  /' >&2
    done
  done
}

# ---------------------------------------------------------------- start

corosync_conf() {
  local n=$1 count=$2 i addr
  cat <<EOF
# Written by scripts/pacemaker-rig.sh for node $n.
totem {
  version: 2
  cluster_name: vesper-rig
  transport: knet
  ip_version: ipv4
  crypto_cipher: none
  crypto_hash: none
}
logging {
  to_stderr: no
  to_syslog: no
  to_logfile: yes
  logfile: $LOGS/$n/corosync.log
  timestamp: hires
}
quorum {
  provider: corosync_votequorum
EOF
  if ((count == 1)); then
    echo '  expected_votes: 1'
  else
    # two_node implies wait_for_all: quorum only once both nodes have been seen.
    echo '  two_node: 1'
  fi
  echo '}'
  echo 'nodelist {'
  for ((i = 1; i <= count; i++)); do
    if ((count == 1)); then addr=127.0.0.1; else addr=$SUBNET.$i; fi
    printf '  node {\n    name: node%d\n    nodeid: %d\n    ring0_addr: %s\n  }\n' "$i" "$i" "$addr"
  done
  echo '}'
}

# No crm_feature_set: Pacemaker fills in its own; a newer one than the daemons' makes them refuse
# every update.
seed_cib() {
  cat <<'EOF'
<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="2s"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
EOF
}

prepare_node() {
  local n=$1 count=$2 d=$STATE/$1 sub
  mkdir -p "$d"/{lib-pacemaker,lib-corosync,etc-corosync/uidgid.d,run-crm,run-resource-agents}
  for sub in cib pengine blackbox cores; do
    mkdir -p "$d/lib-pacemaker/$sub"
    chmod 0750 "$d/lib-pacemaker/$sub"
  done
  chown -R hacluster:haclient "$d/lib-pacemaker" "$d/run-crm"
  chmod 0750 "$d/run-crm"
  chmod 1777 "$d/run-resource-agents"
  seed_cib >"$d/lib-pacemaker/cib/cib.xml"
  chown hacluster:haclient "$d/lib-pacemaker/cib/cib.xml"
  chmod 0600 "$d/lib-pacemaker/cib/cib.xml"
  corosync_conf "$n" "$count" >"$d/etc-corosync/corosync.conf"
  : >"$d/corosync.pid"
  rm -rf "${LOGS:?}/${n:?}"
  mkdir -p "$LOGS/$n"
  # Pacemaker's daemons run as hacluster and append to the same log file.
  chown hacluster:haclient "$LOGS/$n"
  chmod 0775 "$LOGS/$n"
}

make_network() {
  local a=node1 b=node2
  # ip netns add makes /run/netns a mount point the first time; the rig's stop undoes only that.
  [ -d /run/netns ] || echo "/run/netns" >>"$STATE/created"
  mountpoint -q /run/netns || echo "mount:/run/netns" >>"$STATE/created"
  ip netns add "$(netns_of $a)"
  ip netns add "$(netns_of $b)"
  ip link add "vpcmk-$a" netns "$(netns_of $a)" type veth peer name "vpcmk-$b" netns "$(netns_of $b)"
  local i n
  for i in 1 2; do
    n=node$i
    ip -n "$(netns_of $n)" link set lo up
    ip -n "$(netns_of $n)" addr add "$SUBNET.$i/24" dev "vpcmk-$n"
    ip -n "$(netns_of $n)" link set "vpcmk-$n" up
  done
}

# Runs a command in the node's network namespace only (the host's if it has none).
in_netns() {
  local n=$1
  shift
  if [ -e "/run/netns/$(netns_of "$n")" ]; then
    nsenter "--net=/run/netns/$(netns_of "$n")" -- "$@"
  else
    "$@"
  fi
}

# The node's persistent mount and UTS namespaces, made inside its network namespace (if any).
# Slave propagation, as ip netns exec uses: mounts the host makes later (where / is shared) show up
# in the node too, while the node's bind mounts stay its own.
make_namespaces() {
  local n=$1 d=$STATE/$1
  touch "$d/mnt" "$d/uts"
  # shellcheck disable=SC2016 # expanded by the inner sh, from its arguments
  in_netns "$n" unshare --mount="$d/mnt" --uts="$d/uts" --propagation slave sh -euc '
    d=$1 n=$2 state=$3
    mount --bind "$d/lib-pacemaker" /var/lib/pacemaker
    mount --bind "$d/lib-corosync" /var/lib/corosync
    mount --bind "$d/etc-corosync" /etc/corosync
    mount --bind "$d/run-crm" /run/crm
    mount --bind "$d/run-resource-agents" /run/resource-agents
    mount --bind "$d/corosync.pid" /run/corosync.pid
    # Copies of the other nodes namespace files would pin those namespaces until this one is gone.
    umount -l "$state"
    if mountpoint -q /run/netns; then umount -l /run/netns; fi
    echo "$n" >/proc/sys/kernel/hostname
  ' sh "$d" "$n" "$STATE"
}

start_daemon() {
  local n=$1 name=$2 pid
  shift 2
  local prefix
  mapfile -t prefix < <(daemon_prefix "$n")
  # setsid: the daemons outlive this script and its caller's session. Without job control a
  # background job is no process group leader, so setsid and nsenter (no pid namespace) both exec
  # without forking, and $! is the daemon itself. stdio goes to files: a caller waiting for this
  # script's pipes to close must not wait for the daemons. Nor may they inherit the lock (fd 9).
  setsid "${prefix[@]}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    PCMK_logfile="$LOGS/$n/pacemaker.log" PCMK_logfacility=none HA_VARRUN=/run/resource-agents \
    "$@" </dev/null >"$LOGS/$n/$name.out" 2>&1 9<&- &
  pid=$!
  echo "$pid" >"$STATE/$n/$name.pid"
  # Until setsid, nsenter and env have exec'd, the pid carries their names.
  local deadline=$((SECONDS + 5))
  until [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; do
    alive "$pid" || die "$name on $n exited at once (see $LOGS/$n/$name.out)"
    ((SECONDS < deadline)) || die "$name on $n did not start within 5 s (pid $pid is $(cat "/proc/$pid/comm" 2>/dev/null))"
    sleep 0.01
  done
}

do_start() {
  local count=$1 owner=$2 n i
  need_root
  local tool
  for tool in corosync pacemakerd crm_mon nsenter unshare ip; do
    command -v "$tool" >/dev/null || die "$tool is missing: run '$0 install' first"
  done
  if [ -d "$STATE" ]; then
    local prev
    prev=$(cat "$STATE/owner" 2>/dev/null || true)
    if [ -n "$prev" ] && [ "$prev" != "$owner" ] && alive "$prev"; then
      die "a rig started by pid $prev ($(tr '\0' ' ' <"/proc/$prev/cmdline" | cut -c1-80)) is still in use; stop it first ('$0 stop')"
    fi
    log "replacing a previous rig (owner ${prev:-none} gone)"
    do_stop
  fi
  local foreign
  foreign=$(cluster_pids)
  [ -z "$foreign" ] || die "corosync/pacemakerd already running on this host (pid $foreign), not started by this rig; stop them first"

  local t0=$SECONDS
  mkdir -p "$STATE"
  # ns files can only be bound onto a mount that does not propagate (as ip netns does for /run/netns).
  mountpoint -q "$STATE" || mount --bind "$STATE" "$STATE"
  mount --make-private "$STATE"
  echo "$owner" >"$STATE/owner"
  : >"$STATE/created"
  local m
  for m in "${MOUNT_POINTS[@]}"; do
    [ -e "$m" ] && continue
    case "$m" in *.pid) touch "$m" ;; *) mkdir -p "$m" ;; esac
    echo "$m" >>"$STATE/created"
  done
  for ((i = 1; i <= count; i++)); do echo "node$i"; done >"$STATE/nodes"

  # From here on any failure tears down what was built and shows the logs.
  trap 'rc=$?; trap - EXIT; if ((rc != 0)); then tail_logs; log "start failed, cleaning up"; do_stop || true; fi; exit $rc' EXIT

  for n in $(nodes); do prepare_node "$n" "$count"; done
  ((count == 1)) || make_network
  for n in $(nodes); do
    # Checked where it runs: corosync finds its own node by matching ring0_addr to local addresses.
    # Its complaints go to the log file (already set up), which the exit trap shows.
    in_netns "$n" corosync -t -c "$STATE/$n/etc-corosync/corosync.conf" >/dev/null 2>&1 ||
      die "corosync rejects the generated $STATE/$n/etc-corosync/corosync.conf"
    make_namespaces "$n"
  done

  log "starting corosync on $(nodes | tr '\n' ' ')"
  for n in $(nodes); do start_daemon "$n" corosync corosync -f -c /etc/corosync/corosync.conf; done
  local deadline=$((SECONDS + 15))
  for n in $(nodes); do
    until in_node "$n" timeout 5 corosync-cfgtool -s >/dev/null 2>&1; do
      [ -n "$(live_pid "$STATE/$n/corosync.pid" corosync)" ] || die "corosync on $n exited (see $LOGS/$n/corosync.log)"
      ((SECONDS < deadline)) || die "corosync on $n does not answer after 15 s"
      sleep 0.1
    done
  done

  log "starting pacemakerd"
  for n in $(nodes); do start_daemon "$n" pacemakerd pacemakerd; done
  deadline=$((SECONDS + START_TIMEOUT))
  until all_online; do
    for n in $(nodes); do
      [ -n "$(live_pid "$STATE/$n/pacemakerd.pid" pacemakerd)" ] || die "pacemakerd on $n exited (see $LOGS/$n/pacemaker.log)"
      [ -n "$(live_pid "$STATE/$n/corosync.pid" corosync)" ] || die "corosync on $n exited (see $LOGS/$n/corosync.log)"
    done
    ((SECONDS < deadline)) || die "not all nodes online after ${START_TIMEOUT} s"
    sleep 0.2
  done
  trap - EXIT
  log "online: $(nodes | tr '\n' ' ')after $((SECONDS - t0)) s; logs in $LOGS"
  for n in $(nodes); do
    printf '%s\t%s\n' "$n" "$(cli_prefix "$n" | tr '\n' ' ' | sed 's/ $//')"
  done
}

# ---------------------------------------------------------------- stop

# stop_on_every_node NAME TIMEOUT: TERM to NAME on every node at once, then waits for each.
stop_on_every_node() {
  local name=$1 timeout=$2 n pid
  for n in $(nodes); do
    pid=$(live_pid "$STATE/$n/$name.pid" "$name")
    if [ -n "$pid" ]; then
      log "stopping $name on $n (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true # it may have just exited
    fi
  done
  for n in $(nodes); do
    pid=$(live_pid "$STATE/$n/$name.pid" "$name")
    [ -z "$pid" ] || wait_gone "$pid" "$timeout" || log "$name on $n did not exit within $timeout s"
  done
}

do_stop() {
  need_root
  if [ ! -d "$STATE" ]; then
    log "not running"
    return 0
  fi
  local n pid
  # Pacemaker first (it stops its resources on the way out), then corosync underneath it.
  stop_on_every_node pacemakerd "$PCMK_STOP_TIMEOUT"
  stop_on_every_node corosync "$COROSYNC_STOP_TIMEOUT"
  # Whatever is left in a node's namespaces (a hung subdaemon, an agent) is killed outright.
  local left
  for n in $(nodes); do
    left=$(pids_in_ns "$STATE/$n/mnt" | tr '\n' ' ')
    if [ -n "$left" ]; then
      log "killing leftovers on $n: $left"
      # shellcheck disable=SC2086
      kill -KILL $left 2>/dev/null || true
    fi
  done
  for n in $(nodes); do
    for pid in $(pids_in_ns "$STATE/$n/mnt"); do wait_gone "$pid" 5 || log "pid $pid on $n survives SIGKILL"; done
    umount "$STATE/$n/mnt" 2>/dev/null || true
    umount "$STATE/$n/uts" 2>/dev/null || true
    if [ -e "/run/netns/$(netns_of "$n")" ]; then
      # Deleting the namespace deletes the veth end in it, and with it the pair.
      ip netns delete "$(netns_of "$n")" || log "could not delete network namespace $(netns_of "$n")"
    fi
  done
  # Undone in reverse order, and only what is not in use meanwhile (an empty dir, no netns left).
  local m
  for m in $(tac "$STATE/created" 2>/dev/null || true); do
    case "$m" in
    mount:*)
      m=${m#mount:}
      [ -n "$(ls -A "$m" 2>/dev/null)" ] || umount "$m" 2>/dev/null || true
      ;;
    *)
      if [ -d "$m" ]; then rmdir "$m" 2>/dev/null || true; else rm -f "$m"; fi
      ;;
    esac
  done
  umount "$STATE" 2>/dev/null || true
  rm -rf "$STATE"
  log "stopped"
}

# ---------------------------------------------------------------- status

do_status() {
  if [ ! -d "$STATE" ]; then
    echo "not running"
    return 3
  fi
  local n m view rc=0
  for n in $(nodes); do
    view=$(online_view "$n")
    if [ -z "$view" ]; then
      echo "$n: cluster does not answer"
      rc=3
      continue
    fi
    for m in $(nodes); do
      if grep -qx "$m true" <<<"$view"; then echo "$n sees $m online"; else
        echo "$n sees $m offline"
        rc=3
      fi
    done
  done
  return $rc
}

# ---------------------------------------------------------------- main

# start and stop of one rig must not interleave; the lock is on this script itself, so nothing is
# left behind.
lock() {
  exec 9<"$0"
  flock -w 120 9 || die "another $0 start/stop is still running after 120 s"
}

verb=${1:-}
[ -n "$verb" ] || usage
shift
case "$verb" in
install)
  need_root
  install_debs
  ;;
start)
  count=1 owner=''
  while (($#)); do
    case "$1" in
    --nodes)
      count=${2:-}
      shift 2 || usage
      ;;
    --nodes=*)
      count=${1#--nodes=}
      shift
      ;;
    --owner)
      owner=${2:-}
      shift 2 || usage
      ;;
    *) usage ;;
    esac
  done
  [[ "$count" == 1 || "$count" == 2 ]] || die "--nodes must be 1 or 2, not '$count'"
  lock
  do_start "$count" "$owner"
  ;;
stop)
  lock
  do_stop
  ;;
status)
  do_status
  ;;
exec)
  (($# >= 2)) || usage
  node=$1
  shift
  grep -qsx "$node" "$STATE/nodes" || die "no node '$node' (nodes: $(nodes | tr '\n' ' '))"
  in_node "$node" "$@"
  ;;
*) usage ;;
esac
