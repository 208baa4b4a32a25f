"""The command-template adapter: placeholders, option checks, and a real start (netns)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from harness.hosts import LinkExists, LogLine, PathExists, TcpListening
from harness.impls import (
    DEFAULT_ADDRESSES,
    PLACEHOLDERS,
    CommandSpec,
    CommandTemplate,
    ProxyEndpoint,
    TemplateError,
    choose_adapter,
    names,
    registry,
    singbox_config,
)
from harness.impls.command import parse_ready, placeholder_values, render, unknown_tokens
from harness.impls.singbox import CONFIG_TEMPLATE
from ztun.tools import tool

PROXY_URL = "socks5://us%20er:p%40ss@10.200.1.2:1080"


def _values(**overrides: Any) -> dict[str, str]:
    args: dict[str, Any] = {
        "device": "zt0",
        "addresses": DEFAULT_ADDRESSES,
        "proxy": ProxyEndpoint.parse(PROXY_URL),
        "proxy_url": PROXY_URL,
        "mtu": 1400,
        "config": "/w/config",
        "workdir": "/w",
    }
    return placeholder_values(**{**args, **overrides})


def test_every_placeholder_has_its_value() -> None:
    values = _values()
    assert set(values) == set(PLACEHOLDERS)
    assert values == {
        "device": "zt0",
        "mtu": "1400",
        "ipv4": "172.19.0.1",
        "ipv4_cidr": "172.19.0.1/30",
        "ipv6": "fdfe:dcba:9876::1",
        "ipv6_cidr": "fdfe:dcba:9876::1/126",
        "proxy_url": PROXY_URL,
        "proxy_host": "10.200.1.2",
        "proxy_port": "1080",
        "proxy_user": "us er",
        "proxy_pass": "p@ss",
        "config": "/w/config",
        "workdir": "/w",
    }
    no_auth = _values(proxy=ProxyEndpoint.parse("socks5://10.0.0.1:9"), addresses=["10.0.0.5/24"])
    assert (no_auth["proxy_user"], no_auth["ipv6"], no_auth["ipv6_cidr"]) == ("", "", "")


def test_only_placeholders_are_substituted_other_braces_stay() -> None:
    yaml = 'tun: {device}\nmtu: {mtu}\nempty: {}\nflow: { a: 1 }\njson: {"k": {"v": 2}}\n'
    assert render(yaml, _values()) == (
        'tun: zt0\nmtu: 1400\nempty: {}\nflow: { a: 1 }\njson: {"k": {"v": 2}}\n'
    )
    # Nested braces: the inner token is a placeholder, the outer pair literal.
    assert render("{{device}}", _values()) == "{zt0}"


def test_an_unknown_token_is_a_usage_error_naming_it() -> None:
    assert unknown_tokens("x {device} {proxyurl} {tun} {proxyurl}") == ["proxyurl", "tun"]
    with pytest.raises(TemplateError, match=r"unknown placeholder \{proxyurl\}, \{tun\}"):
        render("x {proxyurl} {tun}", _values())
    with pytest.raises(TemplateError, match=r"--tun2socks-command: unknown placeholder \{dev\}"):
        CommandSpec.parse("tun2x --dev {dev}")


def test_config_template_is_checked_when_parsed(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("proxy: {proxy}\n")
    with pytest.raises(TemplateError, match=r"c\.yaml: unknown placeholder \{proxy\}"):
        CommandSpec.parse("tun2x -c {config}", config_template=bad)
    with pytest.raises(ValueError, match="No such file"):
        CommandSpec.parse("tun2x", config_template=tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("link", None),
        ("log:started on \\S+", LogLine("started on \\S+")),
        ("tcp:9090", TcpListening(9090)),
    ],
)
def test_ready_specs(spec: str, expected: object) -> None:
    assert parse_ready(spec) == expected


@pytest.mark.parametrize("spec", ["", "links", "log:", "log:(", "tcp:0", "tcp:x", "udp:53"])
def test_bad_ready_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="--tun2socks-ready"):
        parse_ready(spec)


def test_choose_adapter_rules() -> None:
    assert choose_adapter().name == "ztun"
    assert choose_adapter("sing-box", name="sb-1.14").name == "sb-1.14"
    choice = choose_adapter(command="tun2x -d {device}", name="tun2x", ready="tcp:9")
    assert (choice.name, choice.registered) == ("tun2x", None)
    assert isinstance(choice.build(), CommandTemplate)
    assert shlex.split(choice.describe_options()) == [
        "--tun2socks-command",
        "tun2x -d {device}",
        "--tun2socks-ready",
        "tcp:9",
        "--tun2socks-name",
        "tun2x",
    ]
    assert choose_adapter(command="tun2x").name == "command"
    with pytest.raises(ValueError, match="unknown tun2socks implementation 'tun2x'"):
        choose_adapter("tun2x")
    with pytest.raises(ValueError, match="not both"):
        choose_adapter("ztun", command="tun2x")
    with pytest.raises(ValueError, match="--tun2socks-ready only apply with --tun2socks-command"):
        choose_adapter(ready="link")
    with pytest.raises(ValueError, match="--tun2socks-name"):
        choose_adapter(command="tun2x", name="two words")


def test_the_tun2socks_help_lists_what_the_registry_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The option's help names the adapters installed in the entry-point group, not a
    list written beside it: an extra entry point shows up, a missing one does not."""
    import importlib.metadata

    from harness.plugin import add_adapter_options

    def help_text() -> str:
        helps: dict[str, str] = {}
        add_adapter_options(lambda name, **kw: helps.setdefault(name, kw.get("help", "")))
        return helps["--tun2socks"]

    assert {"ztun", "sing-box"} <= set(names())
    assert f"installed: {', '.join(names())};" in help_text()
    extra = importlib.metadata.EntryPoint("tun2x", "x.adapter:X", "ztun_harness.tun2socks")
    real = dict(registry())
    monkeypatch.setattr("harness.impls.registry", lambda: {**real, "tun2x": extra})
    assert "tun2x" in help_text()


def test_singbox_template_renders_the_adapters_config() -> None:
    """The shipped sing-box template is the built-in adapter's config, as a template."""
    values = _values(config="", workdir="")
    rendered = json.loads(render(CONFIG_TEMPLATE.read_text(), values))
    built = singbox_config(
        device="zt0", addresses=DEFAULT_ADDRESSES, proxy=ProxyEndpoint.parse(PROXY_URL), mtu=1400
    )
    assert rendered == built


# --------------------------------------------------------------------------- live


@pytest.mark.netns
def test_harness_configures_a_device_the_command_only_creates(topology: Any) -> None:
    """An implementation that only creates its TUN: readiness is the link appearing (no log
    line), then the harness sets MTU and addresses and brings it up."""
    host = topology.client
    script = "sleep 0.2; ip tuntap add dev {device} mode tun && exec sleep 60"
    spec = CommandSpec.parse(
        f"sh -c {shlex.quote(script)}", name="tuntap-only", harness_configures_device=True
    )
    running = CommandTemplate(spec).start(
        host, device="zcmd0", proxy_url="socks5://10.200.1.2:1080", mtu=1280
    )
    with running:
        assert running.version == "tuntap-only (no --tun2socks-version-command)"
        assert {str(a) for a in host.addresses("zcmd0")} >= set(DEFAULT_ADDRESSES)
        link = host.run([tool("ip"), "-o", "link", "show", "zcmd0"], check=True).stdout
        assert "mtu 1280" in link and ",UP" in link
        route = host.run([tool("ip"), "route", "get", "198.51.100.7"], check=True).stdout
        assert "dev zcmd0" in route


@pytest.mark.netns
def test_link_and_path_readiness_are_the_hosts_view(topology: Any) -> None:
    """A link made inside the namespace satisfies LinkExists and PathExists(/sys/class/net/X)
    there, though the harness's own /sys (the root namespace's) never shows it."""
    host = topology.client
    sleep, ip = tool("sleep"), tool("ip")
    make = f"{sleep} 0.2; {ip} tuntap add dev {{}} mode tun && exec {sleep} 60"
    host.spawn([tool("sh"), "-c", make.format("zdum0")], name="a", ready=LinkExists("zdum0"))
    host.spawn(
        [tool("sh"), "-c", make.format("zdum1")],
        name="b",
        ready=PathExists("/sys/class/net/zdum1"),
    )
    assert not Path("/sys/class/net/zdum1").exists()
    assert {"zdum0", "zdum1"} <= set(host.interfaces())
