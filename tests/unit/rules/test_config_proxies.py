"""Config: proxies, groups, default_outbound, fail_open and rules naming outbounds
(docs/contracts.md section 2) - every key, every error with its file:line."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ztun.rules import (
    DEFAULT_GROUP,
    Action,
    ConfigError,
    Flow,
    GroupSpec,
    Policy,
    ProxySpec,
    load_config,
)

GOOD = """\
default_outbound = "main"
fail_open = true

[[proxies]]
name = "a"
url = "socks5://10.0.0.2:1080"

[[proxies]]
name = "b"
url = "http://user:pw@10.0.0.3:3128"

[[proxies]]
name = "c.4a"
url = "socks4a://ident@[fd00::4]:1080"
udp = false

[groups.main]
policy = "round-robin"
members = ["b", "a"]
probe = "192.0.2.10:80"
interval = 0.5

[groups.spare]
members = ["c.4a"]

[[rules]]
domain_suffix = ["corp.example"]
outbound = "b"

[[rules]]
cidr = "10.0.0.0/8"
outbound = "spare"

[[rules]]
port = 25
action = "reject"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ztun.toml"
    path.write_text(text)
    return path


def test_every_key(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, GOOD))
    path = str(tmp_path / "ztun.toml")
    assert c.proxies == (
        ProxySpec("a", "socks5://10.0.0.2:1080", True, f"{path}:4"),
        ProxySpec("b", "http://user:pw@10.0.0.3:3128", False, f"{path}:8"),
        ProxySpec("c.4a", "socks4a://ident@[fd00::4]:1080", False, f"{path}:12"),
    )
    assert c.groups == (
        GroupSpec("main", ("b", "a"), Policy.ROUND_ROBIN, ("192.0.2.10", 80), 0.5, f"{path}:17"),
        GroupSpec("spare", ("c.4a",), origin=f"{path}:23"),
    )
    assert c.default_outbound == "main" and c.default_action is Action.PROXY
    assert c.fail_open is True
    rs = c.rule_set()
    assert rs.match(Flow("tcp", None, 443, "git.corp.example")) == "b"
    assert rs.match(Flow("udp", ipaddress.ip_address("10.1.2.3"), 53)) == "spare"
    assert rs.match(Flow("tcp", ipaddress.ip_address("192.0.2.1"), 25)) == "reject"
    assert rs.match(Flow("tcp", ipaddress.ip_address("192.0.2.1"), 443)) == "main"
    # Without proxy = or --proxy, the group `default` is every [[proxies]] in order.
    assert [p.name for p in c.all_proxies()] == ["a", "b", "c.4a"]
    assert c.all_groups()[0] == GroupSpec(DEFAULT_GROUP, ("a", "b", "c.4a"), origin="proxy")
    assert c.all_groups()[1:] == c.groups


def test_proxy_key_and_repeated_flags_make_the_failover_group_default(tmp_path: Path) -> None:
    c = load_config(None, {"proxy": ["socks5://10.0.0.2:1080", "http://10.0.0.3:3128"]})
    assert c.proxy_urls == ("socks5://10.0.0.2:1080", "http://10.0.0.3:3128")
    assert c.proxy == "socks5://10.0.0.2:1080"
    assert c.all_proxies() == (
        ProxySpec("proxy1", "socks5://10.0.0.2:1080", True, "proxy"),
        ProxySpec("proxy2", "http://10.0.0.3:3128", False, "proxy"),
    )
    assert c.all_groups() == (GroupSpec(DEFAULT_GROUP, ("proxy1", "proxy2"), origin="proxy"),)
    # --proxy beats the file's proxy; the [[proxies]] then stay out of `default`
    text = 'proxy = "socks5://10.9.9.9:1"\n[[proxies]]\nname = "x"\nurl = "socks5://h:1"\n'
    c = load_config(write(tmp_path, text), {"proxy": ["socks4://10.0.0.5:1080"]})
    assert [p.name for p in c.all_proxies()] == ["proxy1", "x"]
    assert c.all_groups()[0].members == ("proxy1",)
    assert c.all_proxies()[0].url == "socks4://10.0.0.5:1080"


def test_defaults_and_the_builtin_default_proxy() -> None:
    c = load_config()
    assert c.default_outbound == DEFAULT_GROUP and not c.fail_open
    assert c.all_proxies() == (ProxySpec("proxy1", "socks5://127.0.0.1:1080", True, "proxy"),)
    assert c.all_groups()[0].members == ("proxy1",)


@pytest.mark.parametrize(("url", "alias"), [("direct://", "direct"), ("reject://", "reject")])
def test_a_lone_direct_or_reject_proxy_makes_default_an_alias(url: str, alias: str) -> None:
    c = load_config(None, {"proxy": [url]})
    assert c.default_alias == alias
    assert c.all_proxies() == () and c.all_groups() == ()


def test_legacy_default_action(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'default_action = "direct"\n')).default_outbound == "direct"
    assert load_config(write(tmp_path, 'default_action = "proxy"\n')).default_outbound == "default"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('name = "a"\n', ""), "ztun.toml:4: proxies[0]: proxy has no name"),
        (('url = "socks5://10.0.0.2:1080"\n', ""), "ztun.toml:4: proxies[0]: proxy has no url"),
        (('name = "a"', 'name = "a b"'), "ztun.toml:5: proxies[0].name: 'a b': a name is 1-32"),
        (('name = "a"', 'name = "direct"'), "ztun.toml:5: proxies[0].name: 'direct' is reserved"),
        (('name = "a"', 'name = "default"'), "proxies[0].name: 'default' is reserved"),
        (('name = "b"', 'name = "a"'), "ztun.toml:9: proxies[1].name: 'a' is already the name"),
        (('name = "a"', "name = 7"), "ztun.toml:5: proxies[0].name: must be a string"),
        (
            ('"socks5://10.0.0.2:1080"', '"ftp://10.0.0.2:1080"'),
            "ztun.toml:6: proxies[0].url: 'ftp://10.0.0.2:1080': unsupported scheme 'ftp'",
        ),
        (
            ('"socks5://10.0.0.2:1080"', '"socks5://u:secret@h"'),
            "ztun.toml:6: proxies[0].url: 'socks5://u:***@h': port missing",
        ),
        (
            ('"socks5://10.0.0.2:1080"', '"direct://"'),
            "ztun.toml:6: proxies[0].url: 'direct://' is not a proxy",
        ),
        (('url = "socks5://10.0.0.2:1080"', "url = 5"), "proxies[0].url: must be a string"),
        (
            ('url = "http://user:pw@10.0.0.3:3128"', 'url = "http://u:p@h:1"\nudp = true'),
            "ztun.toml:11: proxies[1].udp: http:// carries no UDP",
        ),
        (("udp = false", 'udp = "no"'), "ztun.toml:15: proxies[2].udp: must be true/false"),
        (("udp = false", "port = 1"), "ztun.toml:15: proxies[2].port: unknown key (known: name,"),
        (
            ('policy = "round-robin"', 'policy = "random"'),
            "ztun.toml:18: groups.main.policy: 'random' is not one of failover, round-robin, "
            "least-connections",
        ),
        (('members = ["b", "a"]\n', ""), "ztun.toml:17: groups.main: group has no members"),
        (('members = ["b", "a"]', "members = []"), "groups.main.members: must be a non-empty"),
        (
            ('members = ["b", "a"]', 'members = ["b", "z"]'),
            "ztun.toml:19: groups.main.members[1]: 'z' is not a proxy; proxies: a, b, c.4a",
        ),
        (
            ('members = ["c.4a"]', 'members = ["main"]'),
            "ztun.toml:24: groups.spare.members[0]: 'main' is a group (members are proxies)",
        ),
        (('members = ["b", "a"]', 'members = ["b", "b"]'), "members[1]: 'b' is listed twice"),
        (
            ('probe = "192.0.2.10:80"', 'probe = "192.0.2.10"'),
            "ztun.toml:20: groups.main.probe: '192.0.2.10' needs a port (HOST:PORT)",
        ),
        (('probe = "192.0.2.10:80"', "probe = 80"), "groups.main.probe: must be a string"),
        (
            # GroupProber's Target(*probe) raised it only once ztun was starting.
            ('probe = "192.0.2.10:80"', 'probe = "a b:80"'),
            "ztun.toml:20: groups.main.probe: target host 'a b' is neither an IP address",
        ),
        (
            ("interval = 0.5", "interval = 0.1"),
            "ztun.toml:21: groups.main.interval: must be at least 0.2 seconds",
        ),
        (("interval = 0.5", 'interval = "5s"'), "groups.main.interval: must be a number"),
        # TOML has nan and inf: nan passed the `< 0.2` check and made the probe loop spin.
        (
            ("interval = 0.5", "interval = nan"),
            "ztun.toml:21: groups.main.interval: must be a finite number, not nan",
        ),
        (
            ("interval = 0.5", "interval = inf"),
            "ztun.toml:21: groups.main.interval: must be a finite number, not inf",
        ),
        (("interval = 0.5", "timeout = 1"), "ztun.toml:21: groups.main.timeout: unknown key"),
        (("[groups.spare]", "[groups.a]"), "ztun.toml:23: groups.a: 'a' is already the name"),
        (("[groups.spare]", "[groups.reject]"), "groups.reject: 'reject' is reserved"),
        (
            ('default_outbound = "main"', 'default_outbound = "mian"'),
            "ztun.toml:1: default_outbound: 'mian' is not a proxy, a group, direct or reject "
            "(known: a, b, c.4a, main, spare, default, direct, reject)",
        ),
        (
            ('default_outbound = "main"', 'default_outbound = "main"\ndefault_action = "proxy"'),
            "ztun.toml:2: default_action: give default_outbound or default_action, not both",
        ),
        (("fail_open = true", "fail_open = 1"), "ztun.toml:2: fail_open: must be true/false"),
        (('outbound = "spare"', 'outbound = "spar"'), "ztun.toml:32: rules[1].outbound: 'spar'"),
        (
            ('outbound = "spare"', 'outbound = "spare"\naction = "proxy"'),
            "ztun.toml:30: rules[1]: give outbound or action, not both",
        ),
        (('outbound = "spare"\n', ""), "ztun.toml:30: rules[1]: rule has no outbound"),
        (('action = "reject"', 'action = "drop"'), "rules[2].action: 'drop' is not one of proxy"),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    old, new = edit
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    shown = str(info.value).removeprefix(str(tmp_path) + "/")
    assert expected in shown, shown
    assert "secret" not in shown


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        (["socks5://h:1", "direct://"], "proxy[1]: 'direct://' is not a proxy, it cannot be"),
        (["socks5://h"], "proxy[0]: 'socks5://h': port missing"),
        ([5], "proxy[0]: must be a string, not an integer"),
    ],
)
def test_proxy_flag_errors_blame_the_command_line(proxy: list[object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"proxy": proxy})
    assert info.value.file == "<command line>"
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("proxies = 3\n", "ztun.toml:1: proxies: must be an array of tables ([[proxies]])"),
        ("proxies = [3]\n", "ztun.toml:1: proxies[0]: each proxy must be a table"),
        ('groups = "g"\n', "ztun.toml:1: groups: must be a table of groups ([groups.NAME])"),
        ("[groups]\ng = 1\n", "ztun.toml:2: groups.g: a group must be a table"),
    ],
)
def test_section_shapes(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).removeprefix(str(tmp_path) + "/").startswith(expected)


def test_implicit_names_cannot_be_taken(tmp_path: Path) -> None:
    text = 'proxy = "socks5://h:1"\n[[proxies]]\nname = "proxy1"\nurl = "socks5://h:2"\n'
    with pytest.raises(ConfigError, match=r"ztun.toml:3: proxies\[0\]\.name: 'proxy1' is already"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("probe", ["example.com:443", "[2001:db8::1]:443"])
def test_a_socks4_member_needs_an_ipv4_probe(tmp_path: Path, probe: str) -> None:
    """socks4:// reaches IPv4 addresses only: a probe by name or IPv6 address could never
    tell whether it works, so such a group is refused at load (exit 2 from ztun run)."""
    text = GOOD.replace('url = "socks5://10.0.0.2:1080"', 'url = "socks4://10.0.0.2:1080"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text.replace('"192.0.2.10:80"', f'"{probe}"', 1)))
    assert f"groups.main.probe: '{probe}': a is socks4:// and reaches IPv4 addresses only" in str(
        info.value
    )
    load_config(write(tmp_path, text))  # an IPv4 probe is fine
