#!/usr/bin/env bash
# ztun's one entry point on a fresh Debian machine (run as root):
#   ./dev.sh demo          the main job: ztun carrying TCP, UDP and ping in throwaway namespaces
#   ./dev.sh test [ARGS]   install everything, then run the test suite (ARGS go to pytest)
#   ./dev.sh bench [ARGS]  the benchmark (ztun bench)
#   ./dev.sh vm [ARGS]     the VM suite (QEMU guests; slow under TCG)
#   ./dev.sh setup         only install (idempotent; a second run takes about a second)
# The VM row (./dev.sh vm) includes the Vagrant row (VAGRANT_PACKAGES; ZTUN_VAGRANT=0 leaves
# it out); ZTUN_VAGRANT=1 ./dev.sh setup installs both without running them.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

# Every program the code starts is registered in ztun/tools.py with its package and the list
# below that installs it (tests/unit/test_tools_registry.py checks both ways).
APT_PACKAGES=(
  iproute2 iputils-ping ethtool tcpdump curl procps python3 mount
  microsocks dante-server dnsmasq-base nginx-light iperf3 apache2-utils wrk proxychains4
  openssh-client openssh-server nftables tinyproxy-bin
)
VM_PACKAGES=(qemu-system-x86 qemu-utils mmdebstrap e2fsprogs)
# The Vagrant row, part of the VM row: Debian's vagrant and vagrant-libvirt, and a libvirtd
# the harness starts itself inside namespaces of its own (~200 MB of Ruby and libvirt):
# ./dev.sh vm installs it (ZTUN_VAGRANT=0: not), ./dev.sh setup/test only with
# ZTUN_VAGRANT=1; without it the Vagrant tests skip, naming this list.
# Not libvirt-daemon-system: it would enable a system libvirtd and, through
# libvirt-daemon-config-network, the autostarted "default" network with its virbr0 bridge
# in the root namespace at every boot. libvirt-daemon ships the daemon and its drivers with
# no service unit and no maintainer scripts; iptables is what libvirt 9.0 runs to NAT the
# box's network (inside the sandbox's namespace).
VAGRANT_PACKAGES=(vagrant vagrant-libvirt libvirt-daemon libvirt-clients iptables)
VENV=.venv

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "dev.sh: run as root (namespaces, TUN devices and apt need it): sudo $0 $*" >&2
    exit 2
  fi
}

setup_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dev.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # policy-rc.d keeps Debian from starting danted/nginx/sshd system services: the tests
    # start their own instances inside namespaces.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    rm -f /usr/sbin/policy-rc.d
  fi
  modprobe tun 2>/dev/null || true
  modprobe sch_netem 2>/dev/null || true
}

setup_venv() {
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "dev.sh: ztun needs Python >= 3.11 (found $(python3 --version))" >&2; exit 2; }
  local stamp
  stamp=$(cat pyproject.toml | sha256sum | cut -c1-16)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "dev.sh: creating $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip
    "$VENV/bin/pip" install -q -e ".[dev]"
    echo "$stamp" > "$VENV/.stamp"
  fi
}

# Which dev.sh lists this run installed: a test whose tool is missing although one of these
# lists provides it fails with the apt-get line instead of skipping (harness/skips.py).
export ZTUN_DEV_PROFILES=apt
OPTIONAL_PACKAGES=()
if [ "${ZTUN_VAGRANT:-0}" = 1 ]; then
  # The Linux box is the QEMU guest's disk under libvirt: the VM row comes with it.
  OPTIONAL_PACKAGES=("${VM_PACKAGES[@]}" "${VAGRANT_PACKAGES[@]}")
  ZTUN_DEV_PROFILES="apt vm vagrant"
fi

setup() { need_root "$@"; setup_apt "${OPTIONAL_PACKAGES[@]}"; setup_venv; }

cmd=${1:-help}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/ztun" demo "$@" ;;
  test)
    setup
    # -n 2: the suite is namespace-isolated per xdist worker; two workers match two cores.
    exec "$VENV/bin/pytest" -n "${ZTUN_TEST_WORKERS:-2}" "$@" ;;
  bench) setup; exec "$VENV/bin/ztun" bench "$@" ;;
  vm)
    # The VM row: Debian guests under QEMU (KVM where a trial boot proves it works, else
    # TCG), built from Debian packages and cached; and (unless ZTUN_VAGRANT=0) the same guest
    # as a Vagrant box (vagrant-libvirt, libvirtd in namespaces of its own:
    # harness/vms/README.md). Runs serially (a guest uses both cores).
    need_root
    if [ "${ZTUN_VAGRANT:-1}" = 1 ]; then
      ZTUN_DEV_PROFILES="apt vm vagrant"
      setup_apt "${VM_PACKAGES[@]}" "${VAGRANT_PACKAGES[@]}"
    else
      ZTUN_DEV_PROFILES="apt vm"
      setup_apt "${VM_PACKAGES[@]}"
    fi
    setup_venv
    "$VENV/bin/python" -m harness vm build
    exec "$VENV/bin/pytest" tests/vm -m vm -n 0 "$@" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
