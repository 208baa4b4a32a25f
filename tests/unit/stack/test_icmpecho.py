"""--icmp local|direct|reject in the stack, and the echo sessions of `direct`: bytes in,
events and bytes out, a fake clock."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from ztun.stack import IcmpEchoRequest, IcmpMode, SystemStack
from ztun.stack.icmpecho import EchoSessions
from ztun.wire import IcmpPacket, Icmpv6Packet, Ipv4Packet, build_icmp_echo, parse_ip

INET4 = ipaddress.IPv4Interface("172.19.0.1/30")
INET6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")
APP4, DST4 = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("10.0.0.9")
APP6, DST6 = ipaddress.IPv6Address("fdfe:dcba:9876::1"), ipaddress.IPv6Address("2001:db8::9")


def stack(mode: IcmpMode) -> SystemStack:
    return SystemStack(inet4=INET4, inet6=INET6, icmp=mode)


def echo(v6: bool = False, ident: int = 0x1234, seq: int = 7, data: bytes = b"ping!") -> bytearray:
    src, dst = (APP6, DST6) if v6 else (APP4, DST4)
    return build_icmp_echo(src, dst, ident, seq, data)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_direct_hands_the_request_to_the_engine(v6: bool) -> None:
    s = stack(IcmpMode.DIRECT)
    out = s.receive(memoryview(echo(v6)), 0.0)
    src, dst = (APP6, DST6) if v6 else (APP4, DST4)
    assert out == IcmpEchoRequest(6 if v6 else 4, src.packed, dst.packed, 0x1234, 7, b"ping!")
    assert "icmp_echo_answered" not in s.counters


@pytest.mark.parametrize(
    ("v6", "icmp_type", "code"),
    [(False, 3, 13), (True, 1, 1)],  # RFC 1812 5.2.7.1 / RFC 4443 3.1: admin prohibited
    ids=["v4", "v6"],
)
def test_reject_answers_administratively_prohibited(v6: bool, icmp_type: int, code: int) -> None:
    s = stack(IcmpMode.REJECT)
    request = echo(v6)
    out = s.receive(memoryview(bytearray(request)), 0.0)
    assert isinstance(out, bytearray)
    ip = parse_ip(out)
    src, dst = (APP6, DST6) if v6 else (APP4, DST4)
    assert (ip.src, ip.dst) == (dst.packed, src.packed)  # from the pinged address
    if isinstance(ip, Ipv4Packet):
        message = IcmpPacket.checked(ip.payload)
        assert message.verify_checksum()
    else:
        message = Icmpv6Packet.checked(ip.payload)
        assert message.verify_checksum(ip.src, ip.dst)
    assert (message.type, message.code) == (icmp_type, code)
    assert bytes(message.data) == bytes(request)  # the whole request, quoted
    assert s.counters["icmp_echo_rejected"] == 1


def test_local_still_answers_in_place() -> None:
    s = stack(IcmpMode.LOCAL)
    out = s.receive(memoryview(echo()), 0.0)
    assert isinstance(out, memoryview)
    assert IcmpPacket.checked(parse_ip(out).payload).type == 0  # type: ignore[union-attr]


def test_echo_failed_is_an_unreachable_about_the_request() -> None:
    s = stack(IcmpMode.DIRECT)
    request = s.receive(memoryview(echo()), 0.0)
    assert isinstance(request, IcmpEchoRequest)
    out = s.echo_failed(request, 1)
    ip = Ipv4Packet.checked(out)
    message = IcmpPacket.checked(ip.payload)
    assert (message.type, message.code) == (3, 1)
    assert bytes(message.data) == bytes(echo())


def request(src: bytes = APP4.packed, ident: int = 1, seq: int = 1) -> IcmpEchoRequest:
    return IcmpEchoRequest(4, src, DST4.packed, ident, seq, b"x")


def test_one_session_per_app_identifier() -> None:
    counters: Counter[str] = Counter()
    sessions = EchoSessions(counters)
    first, closed = sessions.request(request(ident=1, seq=1), 0.0)
    again, _ = sessions.request(request(ident=1, seq=2), 1.0)
    other, _ = sessions.request(request(ident=2), 1.0)
    assert first is again and other is not first and closed == []
    assert counters["icmp_echo_sessions"] == 2 and counters["icmp_echo_forwarded"] == 3


def test_reply_carries_the_apps_identifier_and_the_networks_source() -> None:
    sessions = EchoSessions(Counter())
    session, _ = sessions.request(request(ident=0xBEEF), 0.0)
    answerer = ipaddress.IPv4Address("10.0.0.10").packed  # whoever the network says
    packet = sessions.reply(session, answerer, 42, b"data")
    ip = Ipv4Packet.checked(packet)
    message = IcmpPacket.checked(ip.payload)
    assert (ip.src, ip.dst) == (answerer, APP4.packed)
    assert (message.type, message.ident, message.seq) == (0, 0xBEEF, 42)
    assert bytes(message.data) == b"data" and message.verify_checksum()


def test_sessions_are_bounded_and_expire() -> None:
    counters: Counter[str] = Counter()
    sessions = EchoSessions(counters, max_sessions=2, idle_timeout=30.0)
    a, _ = sessions.request(request(ident=1), 0.0)
    b, _ = sessions.request(request(ident=2), 10.0)
    c, closed = sessions.request(request(ident=3), 20.0)
    assert closed == [a] and counters["icmp_echo_sessions_evicted"] == 1
    assert sessions.expire(39.9) == []
    assert sessions.expire(40.0) == [b]
    assert len(sessions) == 1
    sessions.forget(c)
    assert len(sessions) == 0
