#!/bin/sh
# mmdebstrap customize hook for vesper's Debian test guests (test/rigs/distro/image.ts runs it
# with the root directory as $1 and the inputs in VESPER_* variables). Everything here works on
# the tree offline: no network, no daemon started.
set -eu
R=$1
: "${VESPER_SSH_PUB:?}" "${VESPER_HOST_PUB:?}" "${VESPER_AGENT_DEB:?}" "${VESPER_CRASHY:?}" "${VESPER_HOSTNAME:?}"

echo "$VESPER_HOSTNAME" > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$VESPER_HOSTNAME" > "$R/etc/hosts"
echo 'LABEL=vesper-root / ext4 defaults,errors=remount-ro 0 1' > "$R/etc/fstab"

# root: the rig's SSH key; no password (the serial console logs in without one, for post-mortems)
chroot "$R" passwd -d root > /dev/null
install -d -m 0700 "$R/root/.ssh"
install -m 0600 "$VESPER_SSH_PUB" "$R/root/.ssh/authorized_keys"

# Network: QEMU's user-mode network (10.0.2.0/24), static, so that no DHCP wait slows the boot.
install -d "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/10-vesper.network" << 'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
chroot "$R" systemctl enable systemd-networkd.service > /dev/null 2>&1
# Timers and waits a short-lived test guest does not want (they also wake an idle guest).
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  fstrim.timer man-db.timer dpkg-db-backup.timer; do
  chroot "$R" systemctl mask "$u" > /dev/null 2>&1
done
# journald in memory: the disk stays as built, and a guest's log does not outlive it.
install -d "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > "$R/etc/systemd/journald.conf.d/vesper.conf"

# The vesper agent, from its Debian package, and the host key it trusts.
install -D -m 0644 "$VESPER_HOST_PUB" "$R/etc/vesper/host.pub"
cp "$VESPER_AGENT_DEB" "$R/tmp/vesper-agent.deb"
chroot "$R" dpkg -i /tmp/vesper-agent.deb > /dev/null
rm -f "$R/tmp/vesper-agent.deb"

# A service that really crashes on demand (SIGUSR1's handler stores to address 0) and that
# systemd restarts; a service that allocates until its cgroup's MemoryMax= has it OOM-killed.
install -m 0755 "$VESPER_CRASHY" "$R/usr/local/bin/vesper-crashy"
cat > "$R/etc/systemd/system/vesper-crashy.service" << 'EOF'
[Unit]
Description=vesper test service that dereferences NULL on SIGUSR1
# restarted as often as a benchmark crashes it
StartLimitIntervalSec=0

[Service]
Type=exec
ExecStart=/usr/local/bin/vesper-crashy
Restart=on-failure
RestartSec=100ms

[Install]
WantedBy=multi-user.target
EOF
chroot "$R" systemctl enable vesper-crashy.service > /dev/null 2>&1
cat > "$R/etc/systemd/system/vesper-memhog.service" << 'EOF'
[Unit]
Description=vesper test service that allocates until MemoryMax= has it OOM-killed

[Service]
Type=exec
# tail keeps a line with no newline in memory: it grows until the kernel kills it
ExecStart=/usr/bin/tail /dev/zero
MemoryMax=48M
MemorySwapMax=0
EOF

# Smaller image: package lists and caches are rebuilt by apt-get update when needed.
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb
