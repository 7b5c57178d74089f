#!/bin/sh
# vesper-fault: the TEST-ONLY fault injector baked into test images, never part of the agent.
# It runs under busybox ash in the guest; init.sh respawns it.
# shellcheck disable=SC3045 # busybox ash's read has -t
#
# One command per line on the virtio-serial
# port TEST_PORT, one answer per command, "ok CMD DETAIL..." or "err CMD WHY":
#   ping             ok ping pong
#   segv             ok segv PID            the demo service faults (SIGUSR1 -> store to 0)
#   term             ok term SENDER TARGET  a separate process SIGTERMs the demo service
#   oom              ok oom PID             tail /dev/zero in a 32M cgroup (answered at start)
#   oom-global       ok oom-global PID MS   tail /dev/zero with no cgroup limit, so that the whole
#                                           guest runs out and the kernel's global OOM killer
#                                           fires (answered at start; MS: guest uptime in ms
#                                           then); killed by the helper if still alive after 90 s
#   agent-oom        ok agent-oom PID ADJ SCORE RSS_KB THREADS   the agent's pid (its pid file),
#                                           oom_score_adj, oom_score, VmRSS and thread count
#   storm N          ok storm MS            runs vesper-exit N times
#   exit CODE        ok exit PID STATUS     runs vesper-exit CODE
#   panic            ok panic               then sysrq-c
#   hang SECONDS     ok hang SECONDS        then a SCHED_FIFO 99 busy loop freezes userspace
#   kill-agent       ok kill-agent PID      then SIGKILL to the agent (init restarts it)
#   stop-agent S     ok stop-agent PID      the agent is SIGSTOPped for S seconds, then SIGCONT:
#                                           its heartbeats stop and nothing else shows (thin
#                                           evidence for the analysis)
#   reboot           ok reboot              then the guest reboots itself (reboot -f)
#   enrol-show       ok enrol-show STATUS TEXT  `vesper-agent enrol`: the host key the agent pinned
#   enrol-reset      ok enrol-reset STATUS TEXT `vesper-agent enrol --reset` as root: the pin is
#                                           forgotten, the next host over the port is pinned
#   crash            ok crash PID           a fresh process stores to address 0 (no respawn wait)
#   panic-now        ok panic-now           then sysrq-c at once (for timing the panic)
#   sigstorm N [R]   ok sigstorm MS PID     N SIGUSR1s from node to a sleep that ignores them,
#                                          paced at R per second when R is given
#   sigstorm-bg N [R] ok sigstorm-bg PID    the same, answered at once (the storm runs on)
#   sigstorm-done PID ok sigstorm-done MS PID  that storm has finished (err ... running: not yet)
#   stat PID         ok stat TICKS HZ UPTIME UTIME STIME  CPU time of a task (benchmarks)
#   wakeups PID      ok wakeups SWITCHES RSS_KB UPTIME  context switches of all its threads
#                                           (voluntary + involuntary) and its RSS (benchmarks)
#   svc [TAG]        ok svc PID [TAG]       the demo service runs (cheap: builtins only, no fork)
#                    err svc down [TAG]     it does not (dead, a zombie, or between restarts);
#                                           TAG is echoed so a caller can tell its own answer
#                                           from a late one meant for a client that gave up
# The *-svc faults leave the demo service DOWN: they create /run/vesper-demo-svc.hold, which
# keeps init from restarting it (for up to 10 min) until release-svc.
#   segv-svc         ok segv-svc PID        as segv (a real SIGSEGV), held down
#   oom-svc          ok oom-svc SVC HOG     the demo service and a tail /dev/zero hog share a
#                                           fresh cgroup (memory.max 4M, memory.oom.group 1):
#                                           the kernel OOM-kills the whole group, the service
#                                           with it (answered before the kill), held down
#   svc-events       ok svc-events KEY N... memory.events of the oom-svc group, flattened
#                                           (e.g. "... oom 1 oom_kill 3 oom_group_kill 1")
#   release-svc      ok release-svc         removes the hold (init restarts the service within
#                                           1 s) and the oom-svc group; a no-op otherwise
#   agent-sched M    ok agent-sched M N      the agent's scheduling, for measuring what it buys:
#                                           main-only (nice -10 on its main thread only, as
#                                           the agent once left it), all (nice -10 on all N
#                                           threads, what the agent sets), rr (SCHED_RR 1, all)
# Only in images with stress tools (the busy-guest soak):
#   stress S ARGS... ok stress PID DIR     stress-ng ARGS for S seconds, in its own cgroup
#                                           (vesper-stress), its files in DIR: /mnt/scratch, the
#                                           scratch disk /dev/vda mounted on first use, or /tmp
#                                           when the guest has no disk (no block I/O then)
#   stress-stop      ok stress-stop STATUS  SIGINT (stress-ng stops its workers and writes its
#                                           report), the group killed if still there after 10 s
#   stress-report    ok stress-report NAME BOGO_OPS... vda_read_kb N vda_write_kb N
#                                           what the last run's report says each stressor did,
#                                           and the scratch disk's I/O since boot

# AGENT_PORT, TEST_PORT, EXIT_PROGRAM, SEGV_PROGRAM...: written by test/rigs/image/build.ts.
# shellcheck source=/dev/null
. /etc/vesper-guest.conf
CG=/sys/fs/cgroup/vesper-oom
SVC_CG=/sys/fs/cgroup/vesper-svc
HOLD=/run/vesper-demo-svc.hold
CR=$(printf '\r')
# Sends N SIGUSR1s to PID, paced at R per second (as fast as it can when R is 0): it sleeps
# when ahead of the schedule instead of spinning, so a single-vCPU guest still runs the agent.
SIGSTORM_JS='const [p, n, r] = process.argv.slice(1).map(Number);
const nap = new Int32Array(new SharedArrayBuffer(4));
const t0 = process.hrtime.bigint();
for (let i = 0; i < n; i++) {
  if (r > 0 && i % 64 === 0) {
    const ahead = Number(t0 + BigInt(Math.round((i * 1e9) / r)) - process.hrtime.bigint()) / 1e6;
    if (ahead > 1) Atomics.wait(nap, 0, 0, ahead);
  }
  process.kill(p, "SIGUSR1");
}
console.log(Number(process.hrtime.bigint() - t0) / 1e6);'

port=
for d in /sys/class/virtio-ports/*; do
  n=
  read -r n 2> /dev/null < "$d/name"
  [ "$n" = "$TEST_PORT" ] && port=/dev/${d##*/}
done
set -f # commands are split into words below, never globbed
[ -n "$port" ] || { echo "vesper-fault: no virtio-serial port named $TEST_PORT" > /dev/console; exit 1; }
# A virtio-serial port opens only once at a time: every child below closes fd 3 (and 4), so a
# straggler cannot keep the next instance of this helper out.
exec 3<> "$port" || exit 1
echo "vesper-fault: listening on $port" > /dev/console
# Idle waits without forking sleep: a read with a timeout on a FIFO nobody writes. The tests
# watch exec events, and an idle guest should show none.
mkfifo /run/vesper-fault.idle 2> /dev/null
exec 4<> /run/vesper-fault.idle
idle() { read -r -t "$1" _ <&4; }

reply() { echo "$*" >&3; }

# Milliseconds of uptime: busybox date has no %N. /proc/uptime counts hundredths.
now_ms() {
  read -r up _ < /proc/uptime
  cs=${up#*.}
  echo $((${up%.*} * 1000 + ${cs#0} * 10))
}

# Sets $demo to the demo service's pid once its SIGUSR1 handler is installed (a SIGUSR1 sent
# before that would kill it without a fault); it may be in its 1 s respawn pause, so this
# waits up to 5 s. Builtins only: the tests watch exec events and need no noise from here.
demo_ready() {
  i=0
  while [ $i -lt 50 ]; do
    demo='' cgt=''
    read -r demo 2> /dev/null < /run/vesper-demo-svc.pid
    [ -n "$demo" ] && while read -r k v; do [ "$k" = SigCgt: ] && cgt=$v; done 2> /dev/null < /proc/"$demo"/status
    [ -n "$cgt" ] && [ $((0x$cgt & 0x200)) -ne 0 ] && return 0
    idle 0.1
    i=$((i + 1))
  done
  return 1
}

number() { case $1 in '' | *[!0-9]*) return 1 ;; esac; }

# Sets $svc to the demo service's pid when it runs, else empties it. Builtins only, so that a
# monitor asking every few seconds costs the guest no fork and the tests see no exec. The pid
# file outlives the process: a zombie, a reused pid or init's child between fork and exec is
# not the service.
svc_alive() {
  svc='' comm='' st=''
  read -r svc 2> /dev/null < /run/vesper-demo-svc.pid
  if number "$svc"; then
    read -r comm 2> /dev/null < /proc/"$svc"/comm
    read -r st 2> /dev/null < /proc/"$svc"/stat
    st=${st##*) }
    case $comm:$st in vesper-demo-svc:[!ZX]*) return 0 ;; esac
  fi
  svc=
  return 1
}

# Empties and removes the oom-svc group. A demo service still alive in it goes back to the root
# group first (only the OOM killer is meant to take it down); the rest (the hog) is killed.
# Bounded: 5 s for the group to empty.
svc_cg_clean() {
  [ -d $SVC_CG ] || return 0
  svc_alive && echo "$svc" 2> /dev/null > /sys/fs/cgroup/cgroup.procs
  if ! echo 1 2> /dev/null > $SVC_CG/cgroup.kill; then
    while read -r p; do kill -KILL "$p"; done 2> /dev/null < $SVC_CG/cgroup.procs
  fi
  i=0 pop=
  while [ $i -lt 50 ]; do
    pop=
    while read -r k v; do [ "$k" = populated ] && pop=$v; done 2> /dev/null < $SVC_CG/cgroup.events
    [ "$pop" = 0 ] && break
    idle 0.1
    i=$((i + 1))
  done
  # Reaps the hog; only once it is surely dead, since wait would block on a live one.
  [ -n "$svchog" ] && [ "$pop" = 0 ] && wait "$svchog" 2> /dev/null
  svchog=
  rmdir $SVC_CG 2> /dev/null || echo "vesper-fault: cannot remove $SVC_CG" > /dev/console
}

# Answers and leaves: unlike oom, it does not wait for the kill, so that svc queries (a
# monitor's) are answered while the group dies. The next release-svc or oom-svc reaps the hog.
do_oom_svc() {
  svc_cg_clean
  if [ -e $HOLD ] && ! svc_alive; then reply "err oom-svc demo service is held down (release-svc first)"; return; fi
  if ! demo_ready; then reply "err oom-svc demo service not running"; return; fi
  : > $HOLD
  # 4M: the hog reaches it soon even under TCG, so the OOM kill follows the command closely
  # enough for the Pacemaker race to time from the command (with 32M the race timed the OOM
  # 0.4 s slower than the SIGSEGV: the time the hog took to fill it).
  if ! { mkdir $SVC_CG && echo 4M > $SVC_CG/memory.max && echo 1 > $SVC_CG/memory.oom.group && echo "$demo" > $SVC_CG/cgroup.procs; } 2> /dev/null; then
    svc_cg_clean
    rm -f $HOLD
    reply "err oom-svc cannot set up $SVC_CG"
    return
  fi
  [ -e $SVC_CG/memory.swap.max ] && echo 0 > $SVC_CG/memory.swap.max
  /bin/sh -c "echo \$\$ > $SVC_CG/cgroup.procs && exec /usr/bin/tail /dev/zero" < /dev/null 3>&- 4>&- &
  svchog=$!
  reply "ok oom-svc $demo $svchog"
}

do_oom() {
  rmdir $CG 2> /dev/null
  if ! { mkdir -p $CG && echo 32M > $CG/memory.max; }; then reply "err oom cannot set up $CG"; return; fi
  [ -e $CG/memory.swap.max ] && echo 0 > $CG/memory.swap.max
  # The shell moves itself into the cgroup, then becomes tail, which buffers /dev/zero forever
  # looking for a newline.
  /bin/sh -c "echo \$\$ > $CG/cgroup.procs && exec /usr/bin/tail /dev/zero" < /dev/null 3>&- 4>&- &
  hog=$!
  reply "ok oom $hog"
  wait $hog
  rmdir $CG
}

# The hog stays in the root cgroup (where init and this helper run), with no memory.max above
# it: only the guest's RAM (no swap) limits it. Answered at start; then this helper waits for the
# kernel to kill it, bounded: after 90 s it kills the hog itself (the test then fails on the
# missing record). Builtins only while waiting: a fork under memory pressure could stall.
do_oom_global() {
  /usr/bin/tail /dev/zero < /dev/null > /dev/null 2>&1 3>&- 4>&- &
  hog=$!
  reply "ok oom-global $hog $(now_ms)"
  i=0
  while [ $i -lt 450 ]; do
    st=
    read -r st 2> /dev/null < /proc/"$hog"/stat
    st=${st##*) }
    case $st in '' | [ZX]*) break ;; esac
    idle 0.2
    i=$((i + 1))
  done
  [ $i -ge 450 ] && echo "vesper-fault: oom-global hog $hog still alive after 90 s, killing it" > /dev/console
  kill -KILL $hog 2> /dev/null
  wait $hog
}

# The agent's standing with the OOM killer, read from /proc (builtins only).
do_agent_oom() {
  p=
  read -r p 2> /dev/null < /run/vesper-agent.pid
  if ! number "$p" || [ ! -d /proc/"$p" ]; then reply "err agent-oom agent not running"; return; fi
  adj='' score='' rss='' threads=''
  read -r adj 2> /dev/null < /proc/"$p"/oom_score_adj
  read -r score 2> /dev/null < /proc/"$p"/oom_score
  while read -r k v _; do
    case $k in VmRSS:) rss=$v ;; Threads:) threads=$v ;; esac
  done 2> /dev/null < /proc/"$p"/status
  reply "ok agent-oom $p ${adj:-?} ${score:-?} ${rss:-?} ${threads:-?}"
}

STRESS_CG=/sys/fs/cgroup/vesper-stress
STRESS_REPORT=/run/vesper-stress.yaml
stress=

# Sets $scratch to where stress-ng's files go: the scratch disk when the guest has one.
scratch_dir() {
  scratch=/tmp
  [ -b /dev/vda ] || return 0
  mounted=
  while read -r _ mnt _; do [ "$mnt" = /mnt/scratch ] && mounted=1; done < /proc/mounts
  [ -n "$mounted" ] || mount -t ext4 /dev/vda /mnt/scratch || return 1
  scratch=/mnt/scratch
}

do_stress() {
  secs=$1
  shift
  if ! number "$secs" || [ $# -eq 0 ]; then reply "err stress usage: stress SECONDS STRESS-NG-ARGS..."; return; fi
  if [ -n "$stress" ] && [ -d /proc/"$stress" ]; then reply "err stress already running ($stress)"; return; fi
  if [ ! -x /usr/bin/stress-ng ]; then reply "err stress no stress-ng in this image"; return; fi
  if ! scratch_dir; then reply "err stress cannot mount /dev/vda on /mnt/scratch"; return; fi
  rmdir $STRESS_CG 2> /dev/null
  if ! mkdir -p $STRESS_CG; then reply "err stress cannot set up $STRESS_CG"; return; fi
  rm -f $STRESS_REPORT
  # In its own group, so that stress-stop can end every worker whatever stress-ng does.
  /bin/sh -c 'echo $$ > '$STRESS_CG'/cgroup.procs && exec /usr/bin/stress-ng "$@"' stress-ng \
    --timeout "$secs" --temp-path "$scratch" --metrics-brief --yaml $STRESS_REPORT "$@" \
    < /dev/null > /run/vesper-stress.log 2>&1 3>&- 4>&- &
  stress=$!
  reply "ok stress $stress $scratch"
}

# Bounded: 10 s for stress-ng to stop by itself, 5 s more after cgroup.kill.
do_stress_stop() {
  if [ -z "$stress" ]; then reply "err stress-stop not running"; return; fi
  kill -INT "$stress" 2> /dev/null
  i=0 pop=
  while [ $i -lt 150 ]; do
    pop=
    while read -r k v; do [ "$k" = populated ] && pop=$v; done 2> /dev/null < $STRESS_CG/cgroup.events
    [ "$pop" = 1 ] || break
    [ $i -eq 100 ] && echo 1 > $STRESS_CG/cgroup.kill
    idle 0.1
    i=$((i + 1))
  done
  if [ "$pop" = 1 ]; then reply "err stress-stop $STRESS_CG does not empty"; return; fi
  wait "$stress"
  st=$?
  stress=
  rmdir $STRESS_CG 2> /dev/null
  reply "ok stress-stop $st"
}

do_stress_report() {
  out='' s=''
  while read -r a b c; do
    case $a:$b in
      -:stressor:) s=$c ;;
      bogo-ops:*) [ -n "$s" ] && out="$out $s $b" && s= ;;
    esac
  done 2> /dev/null < $STRESS_REPORT
  # /sys/block/vda/stat: reads, merged, sectors read, ms, writes, merged, sectors written, ...
  if read -r _ _ rs _ _ _ ws _ 2> /dev/null < /sys/block/vda/stat; then out="$out vda_read_kb $((rs / 2)) vda_write_kb $((ws / 2))"; fi
  reply "ok stress-report$out"
}

do_hang() {
  reply "ok hang $1"
  idle 0.2 # let the answer leave before userspace freezes
  read -r old < /proc/sys/kernel/sched_rt_runtime_us
  echo -1 > /proc/sys/kernel/sched_rt_runtime_us
  # Nothing else gets the (single) CPU, not even a killer, so the loop times itself, with
  # shell builtins only.
  # shellcheck disable=SC2016 # expanded by the child shell, not here
  /usr/bin/chrt -f 99 /bin/sh -c 'read -r up _ < /proc/uptime; end=$((${up%.*} + $1)); while :; do read -r up _ < /proc/uptime; [ ${up%.*} -lt $end ] || exit 0; done' hang "$1" 3>&- 4>&- &
  hog=$!
  wait $hog
  kill -9 $hog 2> /dev/null
  echo "$old" > /proc/sys/kernel/sched_rt_runtime_us
}

while :; do
  # EOF means no host on the other end yet: poll until one connects.
  read -r line <&3 || { idle 0.5; continue; }
  # shellcheck disable=SC2086 # split into words on purpose (globbing is off)
  set -- ${line%"$CR"}
  cmd=${1:-}
  arg=${2:-}
  case $cmd in
    '') ;;
    ping) reply "ok ping pong" ;;
    segv)
      if demo_ready; then kill -USR1 "$demo" && reply "ok segv $demo"; else reply "err segv demo service not running"; fi
      ;;
    term)
      # The sender is its own process (a real exec, so its comm is "kill").
      if demo_ready; then
        /bin/kill -TERM "$demo" 3>&- 4>&- &
        s=$!
        wait $s
        reply "ok term $s $demo"
      else reply "err term demo service not running"; fi
      ;;
    oom) do_oom ;;
    oom-global) do_oom_global ;;
    agent-oom) do_agent_oom ;;
    storm)
      if number "$arg"; then
        t0=$(now_ms)
        i=0
        while [ $i -lt "$arg" ]; do
          "$EXIT_PROGRAM" 0
          i=$((i + 1))
        done 3>&- 4>&-
        reply "ok storm $(($(now_ms) - t0))"
      else reply "err storm usage: storm COUNT"; fi
      ;;
    exit)
      if number "$arg"; then
        "$EXIT_PROGRAM" "$arg" 3>&- 4>&- &
        p=$!
        wait $p
        reply "ok exit $p $?"
      else reply "err exit usage: exit CODE"; fi
      ;;
    panic)
      reply "ok panic"
      idle 0.2
      echo c > /proc/sysrq-trigger
      ;;
    reboot)
      reply "ok reboot"
      idle 0.2
      reboot -f
      ;;
    crash)
      "$SEGV_PROGRAM" 3>&- 4>&- &
      reply "ok crash $!"
      ;;
    panic-now)
      reply "ok panic-now"
      echo c > /proc/sysrq-trigger
      ;;
    sigstorm)
      rate=${3:-0}
      if number "$arg" && number "$rate"; then
        /bin/sh -c 'trap "" USR1; exec /bin/sleep 600' 3>&- 4>&- &
        t=$!
        idle 0.3
        ms=$(/usr/bin/node -e "$SIGSTORM_JS" "$t" "$arg" "$rate" 3>&- 4>&-)
        reply "ok sigstorm $ms $t"
        kill -9 $t
      else reply "err sigstorm usage: sigstorm COUNT [PER_SECOND]"; fi
      ;;
    sigstorm-bg)
      # as sigstorm, but answered at once: the helper stays free for other commands (a fault
      # injected in the middle of the storm); sigstorm-done tells when it has finished
      rate=${3:-0}
      if number "$arg" && number "$rate"; then
        /bin/sh -c 'trap "" USR1; exec /bin/sleep 600' 3>&- 4>&- &
        t=$!
        idle 0.3
        (
          ms=$(/usr/bin/node -e "$SIGSTORM_JS" "$t" "$arg" "$rate")
          echo "$ms" > /run/vesper-sigstorm."$t".tmp && mv /run/vesper-sigstorm."$t".tmp /run/vesper-sigstorm."$t"
          kill -9 $t
        ) 3>&- 4>&- < /dev/null > /dev/null 2>&1 &
        reply "ok sigstorm-bg $t"
      else reply "err sigstorm-bg usage: sigstorm-bg COUNT [PER_SECOND]"; fi
      ;;
    sigstorm-done)
      if number "$arg" && [ -f /run/vesper-sigstorm."$arg" ]; then
        read -r ms < /run/vesper-sigstorm."$arg"
        rm -f /run/vesper-sigstorm."$arg"
        reply "ok sigstorm-done $ms $arg"
      else reply "err sigstorm-done running"; fi
      ;;
    stat)
      if number "$arg" && read -r st 2> /dev/null < /proc/"$arg"/stat; then
        # shellcheck disable=SC2086 # the fields of /proc/PID/stat after the comm
        set -- ${st##*) }
        read -r up _ < /proc/uptime
        reply "ok stat $((${12} + ${13})) 100 $up ${12} ${13}"
      else reply "err stat no such task"; fi
      ;;
    wakeups)
      if number "$arg" && [ -d "/proc/$arg/task" ]; then
        sw=0
        rss=0
        # The script runs with globbing off (set -f): on for this one list of threads only
        # (with it off, the pattern was read as a file name and every count was 0).
        set +f
        tasks=$(echo /proc/"$arg"/task/*/status)
        set -f
        for f in $tasks; do
          while read -r k v _; do
            case "$k" in voluntary_ctxt_switches: | nonvoluntary_ctxt_switches:) sw=$((sw + v)) ;; esac
          done 2>/dev/null <"$f"
        done
        while read -r k v _; do if [ "$k" = VmRSS: ]; then rss=$v; fi; done 2>/dev/null <"/proc/$arg/status"
        read -r up _ </proc/uptime
        reply "ok wakeups $sw $rss $up"
      else reply "err wakeups no such task"; fi
      ;;
    threads)
      # Per thread of a process: "tid:comm:switches:ticks" (utime + stime), to see which thread wakes.
      if number "$arg" && [ -d "/proc/$arg/task" ]; then
        out=""
        set +f
        dirs=$(echo /proc/"$arg"/task/*)
        set -f
        for d in $dirs; do
          sw=0
          while read -r k v _; do
            case "$k" in voluntary_ctxt_switches: | nonvoluntary_ctxt_switches:) sw=$((sw + v)) ;; esac
          done 2>/dev/null <"$d/status"
          read -r comm _ 2>/dev/null <"$d/comm" || comm=unknown
          read -r st 2>/dev/null <"$d/stat" || continue
          # shellcheck disable=SC2086 # the fields of stat after the comm
          set -- ${st##*) }
          out="$out ${d##*/}:$comm:$sw:$((${12} + ${13}))"
        done
        read -r up _ </proc/uptime
        reply "ok threads $up$out"
      else reply "err threads no such task"; fi
      ;;
    hang)
      if number "$arg"; then do_hang "$arg"; else reply "err hang usage: hang SECONDS"; fi
      ;;
    svc)
      if svc_alive; then reply "ok svc $svc${arg:+ $arg}"; else reply "err svc down${arg:+ $arg}"; fi
      ;;
    segv-svc)
      # demo_ready first: a service held down would keep it waiting 5 s for nothing, and one in
      # its respawn pause must not find the hold already there.
      if [ -e $HOLD ] && ! svc_alive; then
        reply "err segv-svc demo service is held down (release-svc first)"
      elif demo_ready; then
        : > $HOLD
        if kill -USR1 "$demo"; then reply "ok segv-svc $demo"; else
          rm -f $HOLD
          reply "err segv-svc cannot signal $demo"
        fi
      else reply "err segv-svc demo service not running"; fi
      ;;
    oom-svc) do_oom_svc ;;
    svc-events)
      if [ -r $SVC_CG/memory.events ]; then
        ev=
        while read -r k v; do ev="$ev $k $v"; done < $SVC_CG/memory.events
        reply "ok svc-events$ev"
      else reply "err svc-events no oom-svc group"; fi
      ;;
    release-svc)
      svc_cg_clean
      rm -f $HOLD
      reply "ok release-svc"
      ;;
    enrol-show | enrol-reset)
      if [ "$cmd" = enrol-reset ]; then flag=--reset; else flag=; fi
      # shellcheck disable=SC2086 # no flag: no word
      out=$(/usr/bin/node "$AGENT_PATH" enrol --state-dir "$AGENT_STATE_DIR" $flag 2>&1)
      st=$?
      # shellcheck disable=SC2086 # one line: the text's newlines become spaces
      reply "ok $cmd $st "$out
      ;;
    kill-agent)
      p=
      read -r p 2> /dev/null < /run/vesper-agent.pid
      if [ -n "$p" ] && [ -d /proc/"$p" ]; then
        reply "ok kill-agent $p"
        kill -KILL "$p"
      else reply "err kill-agent agent not running"; fi
      ;;
    stop-agent)
      p=
      read -r p 2> /dev/null < /run/vesper-agent.pid
      if ! number "$arg"; then reply "err stop-agent usage: stop-agent SECONDS"
      elif [ -n "$p" ] && [ -d /proc/"$p" ]; then
        kill -STOP "$p"
        reply "ok stop-agent $p"
        # In the background, so that the helper keeps answering while the agent is stopped.
        (sleep "$arg"; kill -CONT "$p") < /dev/null > /dev/null 2>&1 &
      else reply "err stop-agent agent not running"; fi
      ;;
    agent-sched)
      p=
      read -r p 2> /dev/null < /run/vesper-agent.pid
      if [ -z "$p" ] || [ ! -d /proc/"$p" ]; then reply "err agent-sched agent not running"
      elif [ "$arg" != main-only ] && [ "$arg" != all ] && [ "$arg" != rr ]; then reply "err agent-sched usage: agent-sched main-only|all|rr"
      else
        /usr/bin/chrt -a -o -p 0 "$p" > /dev/null 2>&1 3>&- 4>&-
        [ "$arg" = rr ] && /usr/bin/chrt -a -r -p 1 "$p" > /dev/null 2>&1 3>&- 4>&-
        n=0
        # ls, not a glob: globbing is off in this script.
        # shellcheck disable=SC2045 # task ids are digits only
        for t in $(ls /proc/"$p"/task 3>&- 4>&-); do
          v=-10
          [ "$arg" = main-only ] && [ "$t" != "$p" ] && v=0
          renice "$v" -p "$t" > /dev/null 2>&1 3>&- 4>&- && n=$((n + 1))
        done
        reply "ok agent-sched $arg $n"
      fi
      ;;
    stress)
      shift
      do_stress "$@"
      ;;
    stress-stop) do_stress_stop ;;
    stress-report) do_stress_report ;;
    *) reply "err $cmd unknown command" ;;
  esac
done
