"""The bytes `--icmp direct` writes to and reads from ICMP datagram sockets, per OS.

MOCK NOTICE for the macOS cases: no XNU kernel here; the datagrams a macOS ICMP socket
reads are written out as XNU delivers them, field by field (tests/unit/xnu_icmp.py).
"""

from __future__ import annotations

import random

import pytest

from tests.unit.xnu_icmp import echo, xnu_ipv4_delivery
from ztun.icmp_sockets import DarwinEchoCodec, EchoReply, LinuxEchoCodec, codec_for

# -- Linux ------------------------------------------------------------------------------


def test_linux_writes_no_identifier_and_no_checksum() -> None:
    """net/ipv4/ping.c fills both: ztun writes type, code 0, checksum 0, id 0, seq."""
    codec = LinuxEchoCodec()
    assert codec.open(4) == 0
    assert codec.request(4, 0, 0x0102, b"data") == bytes.fromhex("0800000000000102")
    assert codec.request(6, 0, 7, b"") == bytes.fromhex("8000000000000007")


def test_linux_reads_the_reply_without_an_ip_header() -> None:
    codec = LinuxEchoCodec()
    assert codec.reply(4, 0, echo(0, 0x9999, 5, b"pong")) == EchoReply(5, b"pong")
    assert codec.reply(6, 0, echo(129, 0x9999, 6, b"pong")) == EchoReply(6, b"pong")
    assert codec.reply(4, 0, echo(3, 0, 0, bytes(28))) is None  # an ICMP error
    assert codec.reply(4, 0, b"\0\0\0") is None


# -- macOS ------------------------------------------------------------------------------


def test_darwin_writes_its_identifier_and_the_ipv4_checksum() -> None:
    """rip_output sends the ICMPv4 message as given: ztun sums it (RFC 792); for ICMPv6
    rip6_output sums it itself (the field stays 0)."""
    codec = DarwinEchoCodec(random.Random(1))
    ident = codec.open(4)
    header = codec.request(4, ident, 3, b"abcdefgh")
    assert header[:2] == bytes([8, 0])  # icmp_type ECHO @0, icmp_code @1
    assert header[4:8] == ident.to_bytes(2, "big") + (3).to_bytes(2, "big")  # icmp_id, seq
    assert header + b"abcdefgh" == echo(8, ident, 3, b"abcdefgh")  # icmp_cksum @2
    assert codec.request(6, ident, 3, b"x") == bytes([128, 0, 0, 0]) + header[4:8]


def test_darwin_identifiers_are_unique_among_sessions_and_reused_after() -> None:
    codec = DarwinEchoCodec(random.Random(7))
    held = [codec.open(4) for _ in range(1000)]
    assert len(set(held)) == 1000
    codec.close(held[0])
    assert len({*held[1:], codec.open(6)}) == 1000


def test_darwin_strips_the_ipv4_header_options_included() -> None:
    codec = DarwinEchoCodec()
    ident = codec.open(4)
    reply = echo(0, ident, 9, b"pong")
    assert codec.reply(4, ident, xnu_ipv4_delivery(reply)) == EchoReply(9, b"pong")
    assert codec.reply(4, ident, xnu_ipv4_delivery(reply, ihl=7)) == EchoReply(9, b"pong")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(echo(0, 0x4242, 9, b"pong"), id="another identifier"),
        pytest.param(echo(8, 0x1111, 9, b"ping"), id="a request (someone pings us)"),
        pytest.param(echo(3, 0, 0, bytes(28), code=1), id="host unreachable"),
        pytest.param(echo(0, 0x1111, 9, b"", code=1), id="a reply with a code"),
    ],
)
def test_darwin_keeps_only_its_own_echo_replies(message: bytes) -> None:
    """XNU hands every ICMP message to every ICMP socket: only ours is an answer."""
    codec = DarwinEchoCodec()
    assert codec.reply(4, 0x1111, xnu_ipv4_delivery(message)) is None


def test_darwin_ipv6_has_no_header_and_is_filtered_by_identifier() -> None:
    """rip6_input delivers ICMPv6 without the IPv6 header, to every socket too."""
    codec = DarwinEchoCodec()
    assert codec.reply(6, 0x1111, echo(129, 0x1111, 2, b"v6")) == EchoReply(2, b"v6")
    assert codec.reply(6, 0x1111, echo(129, 0x2222, 2, b"v6")) is None
    assert codec.reply(6, 0x1111, echo(135, 0, 0, bytes(20))) is None  # neighbour solicitation


def test_a_short_or_non_ipv4_read_is_no_reply() -> None:
    codec = DarwinEchoCodec()
    assert codec.reply(4, 1, b"\x45" + bytes(10)) is None
    assert codec.reply(4, 1, echo(0, 1, 1, bytes(20))) is None  # no IPv4 header in front


def test_the_codec_follows_the_platform() -> None:
    assert isinstance(codec_for("darwin"), DarwinEchoCodec)
    assert isinstance(codec_for("linux"), LinuxEchoCodec)
