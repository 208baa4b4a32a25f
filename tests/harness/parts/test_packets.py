"""The packet builders produce what they claim (checked by parsing their bytes back)."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)

from harness import packets
from harness.decode import decode_ip, verify_checksums

V4 = ("10.200.1.1", "10.201.1.2")
V6 = ("fd00:200:1::1", "fd00:201:1::2")
BOTH = pytest.mark.parametrize("src,dst", [V4, V6], ids=["v4", "v6"])


def _parse(packet: object) -> IP | IPv6:
    raw = bytes(packet)  # type: ignore[call-overload]
    return IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)


@BOTH
def test_tcp_syn_carries_the_requested_options(rng: random.Random, src: str, dst: str) -> None:
    pkt = _parse(packets.tcp_syn(rng, src, dst, 80, mss=1400, wscale=9))
    seg = pkt[TCP]
    assert seg.flags == "S" and seg.dport == 80
    assert 32768 <= seg.sport <= 60999
    opts = dict((name, value) for name, value in seg.options if name != "NOP")
    assert opts["MSS"] == 1400
    assert opts["WScale"] == 9
    assert "SAckOK" in opts
    assert isinstance(opts["Timestamp"], tuple) and opts["Timestamp"][1] == 0
    assert verify_checksums(bytes(pkt)).problems == ()


def test_tcp_syn_options_can_be_left_out(rng: random.Random) -> None:
    seg = _parse(
        packets.tcp_syn(rng, *V4, 80, mss=None, wscale=None, sack_permitted=False, timestamps=False)
    )[TCP]
    assert seg.options == []
    assert seg.dataofs == 5


def test_sack_blocks(rng: random.Random) -> None:
    opts = packets.tcp_options(rng, sack_blocks=[(100, 200), (300, 400)])
    seg = _parse(packets.tcp(rng, *V4, 80, flags="A", options=opts))[TCP]
    assert ("SAck", (100, 200, 300, 400)) in seg.options


def test_builders_are_deterministic_per_seed() -> None:
    def build(seed: int) -> bytes:
        rng = random.Random(seed)
        return b"".join(
            bytes(p)
            for p in (
                packets.tcp_syn(rng, *V4, 80),
                packets.udp(rng, *V6, 53, b"q"),
                packets.icmp_echo(rng, *V4),
                packets.garbage(rng, 40),
            )
        )

    assert build(1) == build(1)
    assert build(1) != build(2)


@BOTH
def test_udp_datagram(rng: random.Random, src: str, dst: str) -> None:
    pkt = _parse(packets.udp(rng, src, dst, 5353, b"payload", sport=4000))
    assert pkt[UDP].sport == 4000 and pkt[UDP].dport == 5353
    assert bytes(pkt[UDP].payload) == b"payload"
    assert pkt[UDP].chksum != 0
    assert verify_checksums(bytes(pkt)).problems == ()


def test_udp_zero_checksum_is_really_zero(rng: random.Random) -> None:
    raw4 = bytes(packets.udp(rng, *V4, 53, b"x", zero_checksum=True))
    assert raw4[20 + 6 : 20 + 8] == b"\x00\x00"
    assert verify_checksums(raw4).problems == ()  # "no checksum" is legal on IPv4
    raw6 = bytes(packets.udp(rng, *V6, 53, b"x", zero_checksum=True))
    assert raw6[40 + 6 : 40 + 8] == b"\x00\x00"
    assert "not allowed over IPv6" in verify_checksums(raw6).problems[0]


@BOTH
def test_icmp_echo_request_and_reply(rng: random.Random, src: str, dst: str) -> None:
    req = _parse(packets.icmp_echo(rng, src, dst, seq=7, payload=b"ping"))
    rep = _parse(packets.icmp_echo(rng, src, dst, ident=42, reply=True))
    if ":" in src:
        assert req[ICMPv6EchoRequest].seq == 7 and req[ICMPv6EchoRequest].data == b"ping"
        assert rep[ICMPv6EchoReply].id == 42
    else:
        assert req[ICMP].type == 8 and req[ICMP].seq == 7
        assert rep[ICMP].type == 0 and rep[ICMP].id == 42
    for pkt in (req, rep):
        assert verify_checksums(bytes(pkt)).problems == ()


def test_ttl_one_and_ip_options(rng: random.Random) -> None:
    pkt = _parse(packets.udp(rng, *V4, 53, b"x", ttl=1, ip_options=packets.ROUTER_ALERT))
    assert pkt.ttl == 1
    assert pkt.ihl == 6  # 4 bytes of Router Alert
    assert bytes(pkt)[20:24] == b"\x94\x04\x00\x00"
    assert verify_checksums(bytes(pkt)).problems == ()
    pkt6 = _parse(packets.udp(rng, *V6, 53, b"x", ttl=1))
    assert pkt6.hlim == 1


def test_ipv6_hop_by_hop(rng: random.Random) -> None:
    pkt = _parse(packets.with_hop_by_hop(packets.udp(rng, *V6, 53, b"x")))
    assert pkt.nh == 0 and pkt.haslayer(IPv6ExtHdrHopByHop)
    assert pkt[UDP].dport == 53
    assert verify_checksums(bytes(pkt)).problems == ()


def test_ip_options_on_ipv6_are_refused(rng: random.Random) -> None:
    with pytest.raises(ValueError, match="no header options"):
        packets.udp(rng, *V6, 53, ip_options=packets.ROUTER_ALERT)


def test_mixed_versions_are_refused(rng: random.Random) -> None:
    with pytest.raises(ValueError, match="different IP versions"):
        packets.udp(rng, V4[0], V6[1], 53)


@BOTH
def test_df_oversize(rng: random.Random, src: str, dst: str) -> None:
    raw = bytes(packets.df_oversize(rng, src, dst, 9, mtu=1400, excess=60))
    assert len(raw) == 1460
    pkt = _parse(raw)
    if isinstance(pkt, IP):
        assert pkt.flags.DF


@BOTH
def test_fragments_reassemble_to_the_original(rng: random.Random, src: str, dst: str) -> None:
    original = packets.udp(rng, src, dst, 9, rng.randbytes(3000))
    pieces = packets.fragments(rng, original, 1000)
    assert len(pieces) == 4
    upper = bytes(_parse(original).payload)
    joined = b""
    for index, piece in enumerate(pieces):
        parsed = _parse(piece)
        if isinstance(parsed, IP):
            assert parsed.frag * 8 == len(joined)
            assert bool(parsed.flags.MF) == (index < len(pieces) - 1)
            assert not parsed.flags.DF
            joined += bytes(parsed.payload)
        else:
            frag = parsed[IPv6ExtHdrFragment]
            assert frag.offset * 8 == len(joined) and frag.m == (index < len(pieces) - 1)
            joined += bytes(frag.payload)
        verdict = verify_checksums(bytes(piece))
        assert verdict.problems == () and "IP fragment" in verdict.unverified[0]
    assert joined == upper
    if ":" in src:
        assert len({_parse(p)[IPv6ExtHdrFragment].id for p in pieces}) == 1


@BOTH
def test_icmp_error_quotes_the_flow(rng: random.Random, src: str, dst: str) -> None:
    original = packets.tcp_syn(rng, src, dst, 443)
    router = "10.201.1.1" if ":" not in src else "fd00:201:1::1"
    err = _parse(packets.icmp_error(original, reporter=router, kind="port-unreachable"))
    assert err.src == router and err.dst == src
    if isinstance(err, IP):
        assert err[ICMP].type == 3 and err[ICMP].code == 3
        quoted = bytes(err[ICMP].payload)
    else:
        assert err[ICMPv6DestUnreach].code == 4
        quoted = bytes(err[ICMPv6DestUnreach].payload)
    assert quoted == bytes(original)
    assert verify_checksums(bytes(err)).problems == ()


def test_icmp_frag_needed_and_packet_too_big(rng: random.Random) -> None:
    big4 = packets.df_oversize(rng, *V4, 9, mtu=1400)
    err4 = _parse(packets.icmp_error(big4, reporter="10.200.1.2", kind="frag-needed", mtu=1400))
    assert (err4[ICMP].type, err4[ICMP].code, err4[ICMP].nexthopmtu) == (3, 4, 1400)
    assert len(bytes(err4)) <= 576
    big6 = packets.df_oversize(rng, *V6, 9, mtu=1400)
    err6 = _parse(packets.icmp_error(big6, reporter="fd00:200:1::2", kind="frag-needed", mtu=1280))
    assert err6[ICMPv6PacketTooBig].mtu == 1280
    assert len(bytes(err6)) <= 1280
    with pytest.raises(ValueError, match="mtu"):
        packets.icmp_error(big4, reporter="10.200.1.2", kind="frag-needed")


def test_truncated_and_garbage(rng: random.Random) -> None:
    syn = packets.tcp_syn(rng, *V4, 80)
    cut = packets.truncated(rng, syn)
    assert 1 <= len(cut) < len(bytes(syn)) and bytes(syn).startswith(cut)
    assert packets.truncated(rng, syn, keep=10) == bytes(syn)[:10]
    junk = packets.garbage(rng, 64, version=4)
    assert len(junk) == 64 and junk[0] >> 4 == 4
    assert packets.garbage(rng, 64, version=9)[0] >> 4 == 9


def test_bad_checksum_builders_pin_a_wrong_value(rng: random.Random) -> None:
    good = packets.tcp_syn(rng, *V4, 80)
    bad_ip = bytes(packets.with_bad_ip_checksum(rng, good))
    assert bad_ip[:10] == bytes(good)[:10] and bad_ip[12:] == bytes(good)[12:]
    assert bad_ip[10:12] != bytes(good)[10:12]
    bad_tcp = packets.with_bad_l4_checksum(rng, good)
    assert bytes(bad_tcp)[36:38] != bytes(good)[36:38]
    with pytest.raises(ValueError, match="no header checksum"):
        packets.with_bad_ip_checksum(rng, packets.udp(rng, *V6, 53))
    bad_udp = bytes(packets.with_bad_l4_checksum(rng, packets.udp(rng, *V4, 53, b"x")))
    assert bad_udp[26:28] != b"\x00\x00"


def test_decoder_agrees_with_scapy_on_fields(rng: random.Random) -> None:
    pkt = packets.tcp(rng, *V6, 8080, sport=5555, flags="SA", payload=b"abc")
    info = decode_ip(bytes(pkt))
    assert (info.src, info.dst, info.sport, info.dport) == (V6[0], V6[1], 5555, 8080)
    assert info.tcp_flags == "SA"
    assert info.summary().startswith("IPv6 [fd00:200:1::1]:5555 > [fd00:201:1::2]:8080 TCP [SA]")


def test_write_to_tun_writes_the_bytes_with_optional_packet_info(
    rng: random.Random, tmp_path: object
) -> None:
    import os

    read_fd, write_fd = os.pipe()  # stands in for a TUN fd: same write(2) semantics
    try:
        pkt = packets.udp(rng, *V6, 53, b"x")
        assert packets.write_to_tun(write_fd, pkt) == len(bytes(pkt))
        assert os.read(read_fd, 4096) == bytes(pkt)
        packets.write_to_tun(write_fd, pkt, packet_info=True)
        assert os.read(read_fd, 4096) == b"\x00\x00\x86\xdd" + bytes(pkt)
    finally:
        os.close(read_fd)
        os.close(write_fd)
