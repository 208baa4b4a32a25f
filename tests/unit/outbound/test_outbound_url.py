"""Proxy URL parsing and Target normalisation: every accepted form, every error message."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from ztun.outbound import (
    DirectOutbound,
    ProxyURL,
    RejectOutbound,
    Socks5Outbound,
    Target,
    make_outbound,
    parse_outbound_url,
    parse_proxy_url,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socks5://127.0.0.1:1080", ProxyURL("socks5", "127.0.0.1", 1080)),
        ("socks5h://proxy.lan:9050", ProxyURL("socks5h", "proxy.lan", 9050)),
        ("SOCKS5://127.0.0.1:1080/", ProxyURL("socks5", "127.0.0.1", 1080)),
        ("  socks5://127.0.0.1:1080\n", ProxyURL("socks5", "127.0.0.1", 1080)),
        ("socks5://[::1]:1080", ProxyURL("socks5", "::1", 1080)),
        ("socks5://[2001:DB8:0::1]:1", ProxyURL("socks5", "2001:db8::1", 1)),
        ("socks5://u:p@h:65535", ProxyURL("socks5", "h", 65535, "u", "p")),
        ("socks5://u@h:1", ProxyURL("socks5", "h", 1, "u", "")),
        ("socks5://u:@h:1", ProxyURL("socks5", "h", 1, "u", "")),
        ("socks5://us%3Aer:p%40ss%2Fw@[::1]:1", ProxyURL("socks5", "::1", 1, "us:er", "p@ss/w")),
        ("socks5://user:p@ss@h:1", ProxyURL("socks5", "h", 1, "user", "p@ss")),
        ("socks5://z%C3%A9:%E2%82%AC@h:1", ProxyURL("socks5", "h", 1, "zé", "€")),
        ("socks4://10.0.0.2:1080", ProxyURL("socks4", "10.0.0.2", 1080)),
        ("socks4://ident@h:1080", ProxyURL("socks4", "h", 1080, "ident", None)),
        ("SOCKS4A://[::1]:1080", ProxyURL("socks4a", "::1", 1080)),
        ("http://10.0.0.2:3128", ProxyURL("http", "10.0.0.2", 3128)),
        ("http://u:p%3Aw@h:3128", ProxyURL("http", "h", 3128, "u", "p:w")),
        ("http://u@h:3128", ProxyURL("http", "h", 3128, "u", "")),
        (f"http://u:{'p' * 300}@h:1", ProxyURL("http", "h", 1, "u", "p" * 300)),
    ],
)
def test_valid_urls(text: str, expected: ProxyURL) -> None:
    assert parse_proxy_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:1080", "proxy URL '127.0.0.1:1080': scheme missing"),
        ("ftp://h:1", "proxy URL 'ftp://h:1': unsupported scheme 'ftp'"),
        (
            "https://h:1",
            "unsupported scheme 'https' (use socks5://, socks5h://, socks4://, socks4a://, "
            "http://)",
        ),
        ("http://h", "port missing (e.g. http://h:3128)"),
        ("socks4a://[::1]", "port missing (e.g. socks4a://[::1]:1080)"),
        ("http://::1:3128", "IPv6 address must be in brackets, e.g. http://[::1]:3128"),
        ("socks4://u:p@h:1", "socks4:// has a user id but no password"),
        ("socks4a://u:@h:1", "socks4a:// has a user id but no password"),
        ("socks4://u%00x@h:1", "user id contains a NUL byte"),
        ("http://us%3Aer:p@h:1", "username must not contain ':' (RFC 7617"),
        ("http://@h:1", "username is empty"),
        ("socks5://h", "proxy URL 'socks5://h': port missing"),
        ("socks5://h:", "port missing"),
        ("socks5://[::1]", "port missing"),
        ("socks5://", "host missing"),
        ("socks5://:1080", "host missing"),
        ("socks5://u:p@:1080", "host missing"),
        ("socks5://h:x", "port 'x' is not a number"),
        ("socks5://h:-1", "port '-1' is not a number"),
        ("socks5://h:١٢", "is not a number"),
        ("socks5://h:0", "port 0 out of range 1-65535"),
        ("socks5://h:65536", "port 65536 out of range"),
        ("socks5://::1:1080", "IPv6 address must be in brackets"),
        ("socks5://[::1:1080", "no closing ']'"),
        ("socks5://[nope]:1", "'nope' in brackets is not an IPv6 address"),
        ("socks5://[::1]x:1", "unexpected 'x:1' after ']'"),
        ("socks5://h:1/path", "unexpected '/path' after host:port"),
        ("socks5://h:1?q", "unexpected '?q'"),
        ("socks5://@h:1", "username is empty"),
        ("socks5://:p@h:1", "username is empty"),
        ("socks5://%ff:p@h:1", "username is not valid UTF-8"),
        ("socks5://u:%ff@h:1", "password is not valid UTF-8"),
        (f"socks5://{'u' * 256}:p@h:1", "username longer than 255 bytes"),
        (f"socks5://u:{'p' * 256}@h:1", "password longer than 255 bytes"),
        ("socks5://ho st:1", "host 'ho st' is neither an IP address nor a domain name"),
    ],
)
def test_invalid_urls(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_proxy_url(text)
    assert message in str(info.value)
    assert str(info.value).startswith("proxy URL '")


@pytest.mark.parametrize(
    "text",
    [
        "socks5://user:s3cret@h:0",
        "socks5://user:s3cret@h",
        "socks5://user:s3cret@h:1/x",
        "http://user:s3cret@h",
        "socks4://user:s3cret@h:1",
    ],
)
def test_errors_never_show_the_password(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_proxy_url(text)
    assert "s3cret" not in str(info.value)
    assert "user:***@" in str(info.value)


@pytest.mark.parametrize(
    ("text", "label", "udp"),
    [
        ("socks5://h:1", "socks5 proxy h:1", True),
        ("socks5h://[::1]:2", "socks5 proxy [::1]:2", True),
        ("socks4://h:3", "socks4 proxy h:3", False),
        ("socks4a://h:4", "socks4a proxy h:4", False),
        ("http://u:p@10.0.0.2:3128", "http proxy 10.0.0.2:3128", False),
    ],
)
def test_label_and_udp_capability(text: str, label: str, udp: bool) -> None:
    url = parse_proxy_url(text)
    assert (url.label, url.udp_capable) == (label, udp)


def test_password_masked_in_str_and_hidden_from_repr() -> None:
    url = parse_proxy_url("socks5h://alice:s3cret@[::1]:1080")
    assert str(url) == "socks5h://alice:***@[::1]:1080"
    assert "s3cret" not in repr(url)
    assert url.address == "[::1]:1080"
    assert str(parse_proxy_url("socks5://alice@h:1")) == "socks5://alice@h:1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("direct://", "direct"),
        ("Direct:///", "direct"),
        ("reject://", "reject"),
        ("socks5h://h:1", ProxyURL("socks5h", "h", 1)),
        ("http://h:1", ProxyURL("http", "h", 1)),
    ],
)
def test_outbound_urls(text: str, expected: object) -> None:
    assert parse_outbound_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("direct://h:1", "outbound URL 'direct://h:1': direct:// takes no address"),
        (
            "gopher://h:1",
            "unsupported scheme 'gopher' (use socks5://, socks5h://, socks4://, socks4a://, "
            "http://, direct:// or reject://)",
        ),
        ("direct", "scheme missing"),
        ("socks5://h", "proxy URL 'socks5://h': port missing"),
    ],
)
def test_invalid_outbound_urls(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_outbound_url(text)


def test_make_outbound_picks_the_class() -> None:
    socks = make_outbound("socks5://u:p@127.0.0.1:1080", connect_timeout=3.0, fwmark=7)
    assert isinstance(socks, Socks5Outbound)
    assert (socks.url.username, socks.connect_timeout, socks.fwmark) == ("u", 3.0, 7)
    assert isinstance(make_outbound("direct://", bind_interface="eth0"), DirectOutbound)
    assert isinstance(make_outbound("reject://"), RejectOutbound)


# -- Target -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "canonical", "family", "is_domain"),
    [
        ("192.0.2.1", "192.0.2.1", socket.AF_INET, False),
        ("2001:DB8:0:0::1", "2001:db8::1", socket.AF_INET6, False),
        ("[::1]", "::1", socket.AF_INET6, False),
        ("example.com", "example.com", socket.AF_UNSPEC, True),
        ("localhost", "localhost", socket.AF_UNSPEC, True),
    ],
)
def test_target_forms(host: str, canonical: str, family: int, is_domain: bool) -> None:
    target = Target(host, 53)
    assert target.host == canonical
    assert target.family == family
    assert target.is_domain is is_domain


def test_target_equality_is_by_address() -> None:
    assert Target("::0001", 80) == Target("::1", 80)
    assert hash(Target("::0001", 80)) == hash(Target("::1", 80))
    assert Target("::1", 80) != Target("::1", 81)


def test_target_from_raw_bytes() -> None:
    assert Target.from_ip(bytes([10, 0, 0, 1]), 80) == Target("10.0.0.1", 80)
    assert Target.from_ip(bytes(15) + b"\x01", 80) == Target("::1", 80)
    assert Target.from_ip(ipaddress.ip_address("fe80::1"), 0).family == socket.AF_INET6


def test_target_str() -> None:
    assert str(Target("::1", 443)) == "[::1]:443"
    assert str(Target("10.0.0.1", 80)) == "10.0.0.1:80"
    assert str(Target("example.com", 80)) == "example.com:80"


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("h", -1, "out of range 0-65535"),
        ("h", 65536, "out of range"),
        ("", 1, "empty"),
        ("a b", 1, "neither an IP address nor a domain name"),
        ("a/b", 1, "neither"),
        ("a" * 256, 1, "longer than 255 bytes"),
    ],
)
def test_target_rejects(host: str, port: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Target(host, port)
