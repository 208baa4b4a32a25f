"""TLS SNI and HTTP Host sniffing on real bytes, fed whole, split and byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.sniff.sniff_vectors import RFC9001_CRYPTO_FRAME, rerecord, ssl_client_hello
from ztun.sniff import (
    Sniffed,
    Verdict,
    clean_hostname,
    server_name_from_hello,
    sniff_http,
    sniff_stream,
    sniff_tls,
)

HELLO = ssl_client_hello("WWW.Example.ORG")


def test_real_client_hello_names_the_host() -> None:
    assert sniff_tls(HELLO) == Sniffed("www.example.org", "tls")
    assert sniff_stream(HELLO) == Sniffed("www.example.org", "tls")


def test_byte_by_byte_nothing_until_whole() -> None:
    for end in range(len(HELLO)):
        assert sniff_tls(HELLO[:end]) is Verdict.NEED_MORE, end
    assert sniff_tls(HELLO + b"\x14\x03\x03") == Sniffed("www.example.org", "tls")


@pytest.mark.parametrize("sizes", [[1], [3, 3], [100], [40, 41, 200]])
def test_hello_split_across_records(sizes: list[int]) -> None:
    split = rerecord(HELLO, sizes)
    assert sniff_tls(split) == Sniffed("www.example.org", "tls")
    for end in range(len(split)):
        assert sniff_tls(split[:end]) is Verdict.NEED_MORE


@given(st.lists(st.integers(1, 600), max_size=6))
def test_any_record_split(sizes: list[int]) -> None:
    assert sniff_tls(rerecord(HELLO, sizes)) == Sniffed("www.example.org", "tls")


def test_hello_without_sni_is_unknown() -> None:
    assert sniff_tls(ssl_client_hello(None)) is Verdict.UNKNOWN


def test_tls13_hello_too() -> None:
    hello = ssl_client_hello("a.example", tls13_only=True)
    assert sniff_tls(hello) == Sniffed("a.example", "tls")


def test_quic_hello_body_shares_the_parser() -> None:
    # RFC 9001 A.2's CRYPTO frame: type 06, offset 00, length 40f1, then the handshake
    body = RFC9001_CRYPTO_FRAME[4 + 4 :]
    assert server_name_from_hello(body) == "example.com"


@pytest.mark.parametrize(
    "data",
    [
        b"\x17\x03\x03\x00\x10",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x16\x02\x00",
        b"\x16\x03\x01\x00\x00",
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
    ],
)
def test_not_tls(data: bytes) -> None:
    assert sniff_tls(data) is Verdict.NOT_THIS_PROTOCOL


def test_garbage_after_a_tls_start_is_unknown() -> None:
    body = bytearray(HELLO)
    body[5 + 4 + 2 + 32] = 200  # session id length > 32
    assert sniff_tls(bytes(body)) is Verdict.UNKNOWN
    # a second record that is not a handshake, before the hello is whole
    first = rerecord(HELLO, [50])[: 5 + 50]
    assert sniff_tls(first + b"\x17\x03\x03\x00\x05hello") is Verdict.UNKNOWN


def test_bounded() -> None:
    huge = b"\x16\x03\x01\x40\x00\x01\xff\xff\xff"  # claims a 16 MiB hello
    assert sniff_tls(huge) is Verdict.UNKNOWN
    assert sniff_tls(HELLO[:200], limit=200) is Verdict.UNKNOWN


def test_http_host() -> None:
    req = b"GET /x HTTP/1.1\r\nUser-Agent: curl/7.88\r\nHOST:  Api.Example.com:8080 \r\n\r\n"
    assert sniff_http(req) == Sniffed("api.example.com", "http")
    assert sniff_stream(req) == Sniffed("api.example.com", "http")
    host_at = req.index(b"\r\n", req.index(b"HOST")) + 1
    for end in range(host_at):
        assert sniff_http(req[:end]) is Verdict.NEED_MORE, req[:end]
    assert sniff_http(req[: host_at + 1]) == Sniffed("api.example.com", "http")


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", Verdict.UNKNOWN),  # no Host
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", Verdict.UNKNOWN),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", Verdict.UNKNOWN),
        (b"GET / HTTP/1.1\r\nbroken\r\nHost: a.example\r\n\r\n", Verdict.UNKNOWN),
        (b"GET / SPDY/3\r\n", Verdict.NOT_THIS_PROTOCOL),
        (b"HELLO world\r\n", Verdict.NOT_THIS_PROTOCOL),
        (b"\x16\x03\x01", Verdict.NOT_THIS_PROTOCOL),
        (b"", Verdict.NEED_MORE),
        (b"OPTI", Verdict.NEED_MORE),
    ],
)
def test_http_verdicts(data: bytes, verdict: Verdict) -> None:
    assert sniff_http(data) is verdict


def test_http_bounded() -> None:
    req = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\nHost: late.example\r\n"
    assert sniff_http(req) is Verdict.UNKNOWN


def test_stream_verdicts() -> None:
    assert sniff_stream(b"") is Verdict.NEED_MORE
    assert sniff_stream(b"SSH-2.0-x\r\n") is Verdict.NOT_THIS_PROTOCOL
    assert sniff_stream(b"GET / HTTP/1.0\r\n\r\n") is Verdict.UNKNOWN


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Example.COM.", "example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("10.0.0.1", None),
        ("a..b", None),
        ("-x.example", None),
        ("", None),
        ("bücher.de", None),
        ("a" * 64 + ".example", None),
    ],
)
def test_clean_hostname(raw: str, clean: str | None) -> None:
    assert clean_hostname(raw) == clean
