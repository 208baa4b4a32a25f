#!/bin/sh
# mmdebstrap --customize-hook for the ztun test guest.  $1 is the root directory.
# Everything here is about booting fast under TCG and being driven over SSH:
# no bootloader (QEMU boots the kernel directly), no timers, no waiting for the network.
set -eu
root="$1"
: "${ZTUN_VM_PUBKEY:?path of the test public key}"

echo ztun-guest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 ztun-guest\n::1 localhost ip6-localhost\n' > "$root/etc/hosts"
printf '/dev/vda / ext4 rw,noatime,errors=remount-ro 0 1\n' > "$root/etc/fstab"
mkdir -p "$root/mnt/repo" "$root/mnt/wheels"

# Root logs in with the test key only (the key lives in the cache, never in git).
install -d -m 700 "$root/root/.ssh"
install -m 600 "$ZTUN_VM_PUBKEY" "$root/root/.ssh/authorized_keys"
cat > "$root/etc/ssh/sshd_config.d/ztun.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
# One paramiko connection multiplexes every command of a test: allow many channels.
MaxSessions 64
MaxStartups 64:30:128
CONF

# DHCP from QEMU's user-mode network (slirp) on whatever NIC appears.
cat > "$root/etc/systemd/network/10-wired.network" <<'CONF'
[Match]
Name=eth* en*
[Network]
DHCP=ipv4
LinkLocalAddressing=ipv6
[DHCPv4]
UseDNS=no
CONF
chroot "$root" systemctl enable systemd-networkd.service

# The serial console is the debugging door: root autologin on ttyS0.
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
cat > "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'CONF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
CONF

# Nothing may run behind the tests' back, and nothing may wait for a network it won't get.
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
            e2scrub_reap.service fstrim.timer dpkg-db-backup.timer logrotate.timer \
            systemd-networkd-wait-online.service danted.service getty@tty1.service \
            systemd-timesyncd.service nginx.service iperf3.service; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done

# A small initramfs (only what a virtio guest needs) boots faster under TCG.
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$root/etc/initramfs-tools/conf.d/ztun.conf"
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >/dev/null

# Journald in memory only: the overlay stays small and the saved state stays valid.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > "$root/etc/systemd/journald.conf.d/ztun.conf"

# Guest-side helper that runs this checkout's ztun from the read-only share (the venv
# made at provisioning also has /opt/ztun/bin/ztun).
cat > "$root/usr/local/bin/ztun" <<'PY'
#!/opt/ztun/bin/python3
"""Run ztun from the repository shared read-only at /mnt/repo (no install, no bytecode)."""
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, "/mnt/repo")
from ztun.cli import main  # noqa: E402

sys.exit(main())
PY
chmod 755 "$root/usr/local/bin/ztun"
rm -f "$root/etc/ssh/ssh_host_"*_key*.pub.bak
