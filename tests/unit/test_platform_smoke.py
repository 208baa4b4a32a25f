"""The hosted macOS/Windows check (tests/platform_smoke.py), as far as it can run here:
its command lines go through ztun's and the SOCKS5 server's real argument parsers (a
typo would otherwise surface only on a hosted runner), and it refuses to touch this
host's routes."""

from __future__ import annotations

import importlib.util
import ipaddress
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ztun import cli
from ztun.servers import socks5
from ztun.tools import tool

SCRIPT = Path(__file__).parent.parent / "platform_smoke.py"


def smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("platform_smoke", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("platform", ["darwin", "win32"])
@pytest.mark.parametrize("dns", [False, True])
def test_the_ztun_command_line_parses_to_what_the_check_means(
    platform: str, dns: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = smoke()
    argv = mod.ztun_argv(mod.DEFAULT_DEVICE[platform], 41080, dns=dns)
    assert argv[:3] == [sys.executable, "-m", "ztun"]
    monkeypatch.setattr(sys, "platform", platform)
    parser = cli.build_parser()
    ns = parser.parse_args(argv[3:])
    opts = cli._options(ns, parser)
    assert opts.device == mod.DEFAULT_DEVICE[platform]
    assert opts.addresses == (ipaddress.ip_interface(mod.TUN_ADDRESS),)
    assert opts.proxy == "socks5://127.0.0.1:41080"
    assert opts.config.route.auto and opts.config.route.include == (
        ipaddress.ip_network(mod.PREFIX),
    )
    assert str(opts.config.dns.mode) == ("hijack" if dns else "off")
    assert opts.fwmark is None  # no SO_MARK off Linux: the routes keep the proxy out
    assert ipaddress.ip_address(mod.TUN_PEER) == ipaddress.ip_interface(mod.TUN_ADDRESS).ip + 1
    assert ipaddress.ip_address(mod.TARGET) in ipaddress.ip_network(mod.PREFIX)


def test_the_socks5_command_line_maps_the_prefix_to_loopback() -> None:
    mod = smoke()
    argv = mod.socks_argv(41080)
    assert argv[:3] == [sys.executable, "-m", "ztun.servers.socks5"]
    mapping = socks5.parse_mapping(argv[argv.index("--map") + 1])
    assert socks5.mapped(mod.TARGET, (mapping,)) == "127.0.0.1"


@pytest.mark.parametrize(
    ("platform", "argv"),
    [
        ("darwin", [tool("ping"), "-c", "3", "-t", "15", "198.51.100.10"]),
        ("win32", [tool("ping"), "-n", "3", "-w", "3000", "198.51.100.10"]),
    ],
)
def test_ping_flags_per_os(platform: str, argv: list[str]) -> None:
    assert smoke().ping_argv(tool("ping"), platform, "198.51.100.10") == argv


def test_it_refuses_to_route_this_host(capsys: pytest.CaptureFixture[str]) -> None:
    if sys.platform in ("darwin", "win32"):  # pragma: no cover - the hosted rows run it
        pytest.skip("on macOS/Windows this script is the hosted row's check")
    assert smoke().main([]) == 2
    assert "refusing to run on linux" in capsys.readouterr().err
