#!/bin/sh
# vesper test guest's /init, copied into the image by test/rigs/image/build.ts. It runs under
# busybox ash with no udev and no init system, so it does by hand what those would: mounts,
# module loading, respawning.
# shellcheck disable=SC3045 # busybox ash's read has -t

# AGENT_PORT, AGENT_PATH, MODULES, TEST_HELPERS...: written by test/rigs/image/build.ts.
# shellcheck source=/dev/null
. /etc/vesper-guest.conf
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root

say() { echo "vesper-guest: $*" > /dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# Without udev, devtmpfs is what creates /dev/vportNpM when virtio_console finds the ports.
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing || say "cannot mount tracefs"
# The OOM fault and the agent's memory probes need the memory controller in child cgroups.
if ! { mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo +memory > /sys/fs/cgroup/cgroup.subtree_control; }; then say "cannot set up cgroup2 memory"; fi

loaded=
load() {
  if insmod "$2"; then loaded="$loaded $1"; else say "module $1 failed to load"; fi
}
# MODULES: "name=path" words, in load order (dependencies first).
for m in $MODULES; do load "${m%%=*}" "${m#*=}"; done
say "modules loaded:$loaded"

hostname vesper-guest
ip link set lo up

# virtio_console announces ports from a work queue, after insmod returned: give it 5 s.
i=0
while [ $i -lt 50 ] && ! grep -qsx "$AGENT_PORT" /sys/class/virtio-ports/*/name; do sleep 0.1; i=$((i + 1)); done

# respawn NAME PIDFILE CMD...: runs CMD forever, 1 s apart. The pid file is how the fault
# helper finds its targets. While the hold file next to it (/run/NAME.hold for /run/NAME.pid)
# exists, a dead CMD stays dead: the fault helper's *-svc faults create it so that a polling
# monitor (Pacemaker's, every 10 s) can see the service down, as it would a service that does
# not come back. A forgotten hold must not keep the guest broken, so it lapses after 10 min.
mkfifo /run/vesper-respawn.idle
respawn() {
  name=$1 pidfile=$2
  hold=${pidfile%.pid}.hold
  shift 2
  while :; do
    say "$name starting"
    "$@" < /dev/null &
    echo $! > "$pidfile"
    wait $!
    say "$name exited with status $?, restarting in 1 s"
    sleep 1
    held=0
    while [ -e "$hold" ] && [ $held -lt 3000 ]; do
      [ $held -eq 0 ] && say "$name held down while $hold exists"
      # A timed read on a FIFO nobody writes waits without forking sleep 5 times a second,
      # which would flood the exec events the tests watch.
      if [ -p /run/vesper-respawn.idle ]; then read -r -t 0.2 _ <> /run/vesper-respawn.idle; else sleep 0.2; fi
      held=$((held + 1))
    done
    [ $held -gt 0 ] && say "$name was held down for $((held / 5)) s, restarting"
  done
}

# vesper.enrol=1 on the kernel command line (VmRig's enrol option): the agent as its package runs
# it, with no key given: it pins the first host over its port in AGENT_STATE_DIR (docs/trust.md).
if grep -qw vesper.enrol=1 /proc/cmdline; then set -- --state-dir "$AGENT_STATE_DIR"; else set -- --host-key "$HOST_KEY_PATH"; fi
(export UV_THREADPOOL_SIZE=64; respawn agent /run/vesper-agent.pid /usr/bin/node "$AGENT_PATH" --transport "virtio:$AGENT_PORT" "$@" --state-file /run/vesper-agent/run-state) &
respawn vesper-demo-svc /run/vesper-demo-svc.pid "$DEMO_SERVICE" &
httpd -p 80 -h /srv/www
# The i6300esb watchdog, fed by its own small process at normal priority (not by the agent):
# it stops being fed only when userspace as a whole cannot run (a hang), not when the agent
# alone dies, so its firing (reported by libvirt, action none) tells those two apart.
if ! { [ -e /dev/watchdog ] && watchdog -t 1 -T 3 /dev/watchdog; }; then say "no watchdog device"; fi
[ "$TEST_HELPERS" = 1 ] && respawn vesper-fault /run/vesper-fault.pid "$FAULT_HELPER" &

# PID 1 must not exit. Waiting on a foreground child also reaps orphans as they die.
while :; do sleep 3600; done
