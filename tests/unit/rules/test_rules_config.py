"""Config: one model for file and flags; errors name file, line and key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ztun.dns import DnsMode
from ztun.rules import Action, Config, ConfigError, Flow, load_config, locate

GOOD = """\
# ztun config
proxy = "socks5h://user:pw@proxy.example:1080"
device = "tun://zt7"
addresses = ["172.19.0.1/30", "fdfe:dcba:9876::1/126"]
interface = "eth0"
default_action = "direct"

[route]
auto = true
strict = true
exclude = ["192.168.0.0/16", "2001:db8::/32"]

[dns]
mode = "remote"
upstream = "[2606:4700::1111]:5353"
fake_ip6_range = ""

[sniff]
timeout = 1

[[rules]]
domain_suffix = "corp.example"
action = "proxy"

[[rules]]
cidr = ["10.0.0.0/8"]
port = [22, "8000-8100"]
network = "tcp"
action = "reject"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ztun.toml"
    path.write_text(text)
    return path


def test_full_config(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, GOOD))
    assert c.proxy == "socks5h://user:pw@proxy.example:1080"
    assert c.device_name == "zt7" and c.interface == "eth0"
    assert c.default_action is Action.DIRECT
    assert c.route.auto and c.route.strict and len(c.route.exclude) == 2
    assert c.dns.mode is DnsMode.REMOTE and c.dns.upstream == ("2606:4700::1111", 5353)
    assert c.dns.fake_ip6_range is None
    assert c.sniff.timeout == 1.0
    assert c.rules[1].ports == ((22, 22), (8000, 8100))
    assert c.rules[0].origin.endswith("ztun.toml:21")
    rs = c.rule_set()
    # The legacy actions name outbounds: "proxy" is the group `default`.
    assert rs.match(Flow("tcp", None, 443, "git.corp.example")) == "default"
    assert rs.match(Flow("tcp", ipaddress.ip_address("10.0.0.1"), 22)) == "reject"
    assert rs.match(Flow("tcp", ipaddress.ip_address("10.0.0.1"), 23)) == "direct"


def test_defaults_without_a_file() -> None:
    c = load_config()
    assert c == Config()
    assert c.device_name == "ztun0" and c.dns.mode is DnsMode.OFF and not c.route.auto
    assert [str(a) for a in c.addresses] == ["172.19.0.1/30", "fdfe:dcba:9876::1/126"]


def test_flags_override_the_file(tmp_path: Path) -> None:
    c = load_config(
        write(tmp_path, GOOD),
        {"route.strict": False, "dns.mode": "fake-ip", "route.exclude": ["10.9.0.0/16"]},
    )
    assert not c.route.strict and c.dns.mode is DnsMode.FAKE_IP
    assert c.route.exclude == (ipaddress.ip_network("10.9.0.0/16"),)


def test_auto_route_config_bridges_to_the_planner(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, GOOD))
    arc = c.auto_route_config((ipaddress.ip_address("198.51.100.1"),))
    assert arc.device == "zt7" and arc.strict and arc.capture_dns
    assert arc.proxy_addresses == (ipaddress.ip_address("198.51.100.1"),)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ('action = "reject"', 'action = "rejct"'),
            "ztun.toml:29: rules[1].action: 'rejct' is not one of proxy, direct, reject",
        ),
        (
            ("strict = true", 'strict = "yes"'),
            "ztun.toml:10: route.strict: must be true/false, not a string",
        ),
        (
            ('"192.168.0.0/16"', '"192.168.0.1/16"'),
            "ztun.toml:11: route.exclude[0]: '192.168.0.1/16' is not a CIDR",
        ),
        (
            ('port = [22, "8000-8100"]', 'port = [22, "8100-8000"]'),
            "ztun.toml:27: rules[1].port[1]: '8100-8000': ports are 1-65535, low before high",
        ),
        (
            ('mode = "remote"', 'mode = "dot"'),
            "ztun.toml:14: dns.mode: 'dot' is not one of off, hijack, fake-ip, remote",
        ),
        (
            ("[sniff]\ntimeout = 1", "[sniff]\ntimeout = 1\nfoo = 2"),
            "ztun.toml:20: sniff.foo: unknown key (known: enabled, timeout)",
        ),
        (
            ("socks5h://", "ftp://"),
            "ztun.toml:2: proxy: 'ftp://user:***@proxy.example:1080': unsupported scheme 'ftp'",
        ),
        (
            ('addresses = ["172.19.0.1/30", ', 'mtu = 1000\naddresses = ["172.19.0.1/30", '),
            "ztun.toml:4: mtu: 1000 is outside 1280-65535 (IPv6 needs at least 1280)",
        ),
        (('network = "tcp"\n', ""), None),
        (
            ('cidr = ["10.0.0.0/8"]\nport = [22, "8000-8100"]\nnetwork = "tcp"\n', ""),
            "ztun.toml:25: rules[1]: rule has no condition",
        ),
        (
            ('upstream = "[2606:4700::1111]:5353"\n', ""),
            "ztun.toml:14: dns.mode: remote mode needs dns.upstream",
        ),
        # Taken until it was dialled: each query's task then died on Target's ValueError,
        # and the app got SERVFAIL only from the handler's timer.
        (
            ('"[2606:4700::1111]:5353"', '"a b"'),
            "ztun.toml:15: dns.upstream: target host 'a b' is neither an IP address nor a "
            "domain name",
        ),
        (
            ('"[2606:4700::1111]:5353"', '"socks5://h:1"'),
            "ztun.toml:15: dns.upstream: target host 'socks5://h:1' is neither",
        ),
        # The file's device was checked for length only: these failed to open (exit 1).
        (
            ('"tun://zt7"', '"ztun0"'),
            "ztun.toml:3: device: device 'ztun0': use tun://NAME or fd://N",
        ),
        (('"tun://zt7"', '"tun://a:b"'), "ztun.toml:3: device: device 'tun://a:b': tun://NAME"),
        (('"tun://zt7"', '"fd://99999999999"'), "ztun.toml:3: device: device 'fd://99999999999'"),
        (('"tun://zt7"', '"fd://3"'), None),
        (("exclude = [", "exclude = ["), None),
        (("[route]", "[route]\ntable = 254"), "ztun.toml:9: route.table: 254 is reserved"),
        (("proxy = ", "proxy = 5 #"), "ztun.toml:2: proxy: must be a string, not an integer"),
        (("auto = true\n", "auto = true\nauto = false\n"), "ztun.toml:10: TOML syntax"),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path, edit: tuple[str, str], expected: str | None
) -> None:
    old, new = edit
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    if expected is None:
        load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).removeprefix(str(tmp_path) + "/").startswith(expected), str(info.value)


def test_flag_errors_blame_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), {"route.exclude": ["nope"]})
    assert info.value.file == "<command line>" and info.value.line is None
    assert info.value.key == "route.exclude[0]"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_locate_dotted_keys_and_array_tables() -> None:
    text = 'a = 1\ndns.mode = "x"\n[t]\n"quoted.key" = 2\n[[r]]\nx = 1\n[[r]]\n# c\nx = 2\n'
    assert locate(text, ("dns", "mode")) == 2
    assert locate(text, ("t", "quoted.key")) == 4
    assert locate(text, ("r", 1, "x")) == 9
    assert locate(text, ("r", 1, "missing")) == 7  # falls back to the table header
    assert locate(text, ("nowhere",)) is None


def test_icmp_and_max_udp_sessions(tmp_path: Path) -> None:
    path = write(tmp_path, 'icmp = "direct"\nmax_udp_sessions = 500\n')
    c = load_config(path)
    assert (c.icmp, c.max_udp_sessions) == ("direct", 500)
    flags = load_config(path, {"icmp": "reject", "max_udp_sessions": 0})
    assert (flags.icmp, flags.max_udp_sessions) == ("reject", 0)
    assert (Config().icmp, Config().max_udp_sessions) == ("local", None)  # None: derived


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('icmp = "ping"', "ztun.toml:1: icmp: 'ping' is not one of local, direct, reject"),
        ("max_udp_sessions = -1", "ztun.toml:1: max_udp_sessions: must be 0 (no limit) or more"),
        ('max_udp_sessions = "9"', "ztun.toml:1: max_udp_sessions: must be an integer"),
    ],
)
def test_icmp_and_max_udp_sessions_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text + "\n"))
    assert str(info.value).removeprefix(str(tmp_path) + "/").startswith(expected), str(info.value)
