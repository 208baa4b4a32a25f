"""Reload plans: what applies to new flows, what needs a restart, decided from two
validated configs (the files' text through the real loader)."""

from __future__ import annotations

import dataclasses

import pytest

from ztun.reload import APPLIES, DNS_APPLIES, IGNORED, RESTART, plan_reload
from ztun.rules import Config, ConfigError, load_config

BASE = """
device = "tun://zt0"
default_action = "proxy"
[dns]
mode = "hijack"
upstream = "192.0.2.53:53"
[[rules]]
cidr = ["198.51.100.0/24"]
action = "direct"
"""


def config(text: str, tmp_path) -> Config:  # type: ignore[no-untyped-def]
    """The file a reload re-reads: always the same path, rewritten."""
    path = tmp_path / "ztun.toml"
    path.write_text(text)
    return load_config(path)


def test_every_config_field_is_classified() -> None:
    """A field added to Config later must be put in one set (else reload treats it as a
    restart, which is safe but may not be what its author meant)."""
    names = {f.name for f in dataclasses.fields(Config)}
    assert names == APPLIES | RESTART | {"dns"} | IGNORED
    assert not APPLIES & RESTART


def test_rules_and_log_settings_apply(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = config(BASE, tmp_path)
    new = config(
        'log_level = "debug"\nlog_flows = true\n'
        + BASE.replace('action = "direct"', 'action = "reject"')
        + "[sniff]\nenabled = true\n",
        tmp_path,
    )
    plan = plan_reload(old, new)
    assert not plan.refused
    assert set(plan.applies) == {"rules", "log_level", "log_flows", "sniff"}
    assert plan.summary().startswith("reloaded, changed: ")


def test_dns_upstream_applies_but_its_mode_does_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = config(BASE, tmp_path)
    upstream = config(BASE.replace("192.0.2.53", "192.0.2.54"), tmp_path)
    assert plan_reload(old, upstream).applies == ("dns.upstream",)
    assert "upstream" in DNS_APPLIES
    mode = config(BASE.replace('"hijack"', '"remote"'), tmp_path)
    plan = plan_reload(old, mode)
    assert plan.refused and plan.restart == ("dns.mode",)


def test_a_restart_change_refuses_the_whole_reload_and_names_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = config(BASE, tmp_path)
    new = config(
        'addresses = ["10.9.0.1/30"]\n'
        + BASE.replace("zt0", "zt1").replace('action = "direct"', 'action = "reject"')
        + "[route]\nauto = true\n",
        tmp_path,
    )
    plan = plan_reload(old, new)
    assert plan.refused
    assert set(plan.restart) == {"device", "addresses", "route"}
    message = plan.refusal()
    for key in ("device", "addresses", "route"):
        assert key in message
    assert "running config stays" in message


def test_with_auto_route_the_proxy_address_is_fixed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    routed = BASE + "[route]\nauto = true\n"
    old = config('proxy = "socks5://10.0.0.2:1080"\n' + routed, tmp_path)
    new = config('proxy = "socks5://10.0.0.3:1080"\n' + routed, tmp_path)
    plan = plan_reload(old, new)
    assert plan.refused and any("auto-route" in r for r in plan.restart)
    # A --proxy flag beats the file (the reload re-reads it with the same flags): then the
    # file's proxy changes nothing.
    flag = {"proxy": ["socks5://10.0.0.9:1080"]}
    old_path, new_path = tmp_path / "old.toml", tmp_path / "new.toml"
    old_path.write_text('proxy = "socks5://10.0.0.2:1080"\n' + routed)
    new_path.write_text('proxy = "socks5://10.0.0.3:1080"\n' + routed)
    assert plan_reload(load_config(old_path, flag), load_config(new_path, flag)).unchanged
    # So is a new [[proxies]] entry's address, or a group's.
    grouped = config(
        'proxy = "socks5://10.0.0.2:1080"\n'
        + routed
        + '[[proxies]]\nname = "b"\nurl = "http://10.0.0.4:3128"\n',
        tmp_path,
    )
    assert any("auto-route" in r for r in plan_reload(old, grouped).restart)
    # Without auto-route a new proxy is just a new outbound for new flows.
    plain_old = config('proxy = "socks5://10.0.0.2:1080"\n' + BASE, tmp_path)
    plain_new = config('proxy = "socks5://10.0.0.3:1080"\n' + BASE, tmp_path)
    assert plan_reload(plain_old, plain_new).applies == ("proxy_urls",)


def test_unchanged_even_when_rules_moved_down_a_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = plan_reload(config(BASE, tmp_path), config("# a comment\n" + BASE, tmp_path))
    assert plan.unchanged and plan.summary() == "reloaded: nothing changed"


def test_a_broken_file_names_its_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "broken.toml"
    path.write_text(BASE + '[[rules]]\ncidr = ["not a cidr"]\naction = "direct"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert f"{path}:11" in str(exc.value)
