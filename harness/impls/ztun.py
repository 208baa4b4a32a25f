"""Adapter for ztun itself: ``ztun run`` as a user would run it, through its CLI."""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.hosts import Host, LogLine, Process
from harness.impls.base import ProxyEndpoint, Tun2Socks
from ztun.outbound.url import SCHEMES
from ztun.tools import tool

READY_PATTERN = r"ztun ready"
"""ztun logs ``ztun ready device=NAME ...`` once the TUN is up and its listeners bound."""

EXTRA_ARGS_ENV = "ZTUN_EXTRA_ARGS"
"""Flags added to every ztun the harness starts, split like a shell would: a whole suite
runs against another profile, e.g. ``ZTUN_EXTRA_ARGS=--portable pytest tests/conformance``."""

START_TIMEOUT = 20.0
VERSION_TIMEOUT = 15.0


def default_binary() -> str:
    """The ``ztun`` console script of the harness's own venv (installed editable)."""
    return str(Path(sys.executable).parent / "ztun")


class Ztun(Tun2Socks):
    """``<venv>/bin/ztun run --device tun://DEV --proxy URL --address CIDR ... --mtu N``.

    ``extra_args`` are appended verbatim (e.g. ``["--loglevel", "debug"]``) so tests of
    one ztun option need no adapter change; then those of ``$ZTUN_EXTRA_ARGS``.
    """

    name = "ztun"
    proxy_schemes = SCHEMES  # socks5, socks5h, socks4, socks4a, http

    def __init__(self, *, binary: str | None = None, extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.extra_args = (*extra_args, *shlex.split(os.environ.get(EXTRA_ARGS_ENV, "")))

    def _binary(self, host: Host) -> str:
        return self.binary or str(getattr(host, "ztun_binary", None) or default_binary())

    def unavailable_reason(self, host: Host) -> str | None:
        binary = self._binary(host)
        if not host.run([tool("test"), "-x", binary], timeout=VERSION_TIMEOUT).ok:
            return f"{binary} not found in host {host.name} (pip install -e . in the venv)"
        return None

    def version(self, host: Host) -> str:
        result = host.run([self._binary(host), "--version"], timeout=VERSION_TIMEOUT)
        text = (result.stdout or result.stderr).strip()
        if result.ok and text:
            return text.splitlines()[0]
        try:
            return f"ztun {importlib.metadata.version('ztun')}"
        except importlib.metadata.PackageNotFoundError:
            return "ztun (unknown version)"

    def argv(
        self, host: Host, *, device: str, addresses: Sequence[str], proxy_url: str, mtu: int
    ) -> list[str]:
        argv = [self._binary(host), "run", "--device", f"tun://{device}", "--proxy", proxy_url]
        for cidr in addresses:
            argv += ["--address", cidr]
        return [*argv, "--mtu", str(mtu), *self.extra_args]

    def launch(
        self,
        host: Host,
        *,
        device: str,
        addresses: tuple[str, ...],
        proxy: ProxyEndpoint,
        proxy_url: str,
        mtu: int,
    ) -> tuple[Process, Path | None]:
        argv = self.argv(host, device=device, addresses=addresses, proxy_url=proxy_url, mtu=mtu)
        process = host.spawn(
            argv, name=f"ztun-{device}", ready=LogLine(READY_PATTERN), timeout=START_TIMEOUT
        )
        return process, None
