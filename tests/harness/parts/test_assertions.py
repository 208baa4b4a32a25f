"""assert_checksums_ok / assert_routed_via / assert_socks5_roundtrip on crafted input."""

from __future__ import annotations

import hashlib
import random
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from harness import packets
from harness.assertions import (
    Flow,
    assert_checksums_ok,
    assert_routed_via,
    assert_socks5_roundtrip,
)
from harness.decode import (
    LINKTYPE_ETHERNET,
    internet_checksum,
    ones_sum,
    pseudo_header,
    read_pcap,
    verify_checksums,
    write_pcap,
)
from harness.peers.recording import Socks5Request, UdpTargetStats

V4 = ("10.200.1.1", "10.201.1.2")
V6 = ("fd00:200:1::1", "fd00:201:1::2")


def _reference_sum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: add words, fold carries."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=2000))
def test_ones_sum_matches_the_textbook_algorithm(data: bytes) -> None:
    assert ones_sum(data) == _reference_sum(data)


def test_rfc1071_example() -> None:
    # RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to 0xddf2.
    assert ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_pseudo_header_layouts() -> None:
    v4 = pseudo_header(bytes(4), bytes(4), 6, 20)
    assert len(v4) == 12 and v4[-4:] == b"\x00\x06\x00\x14"
    v6 = pseudo_header(bytes(16), bytes(16), 17, 8)
    assert len(v6) == 40 and v6[-8:] == b"\x00\x00\x00\x08\x00\x00\x00\x11"


def _good_packets(rng: random.Random) -> list[bytes]:
    built = [
        packets.tcp_syn(rng, *V4, 80),
        packets.tcp_syn(rng, *V6, 80),
        packets.tcp(rng, *V4, 80, flags="PA", payload=rng.randbytes(1001)),  # odd length
        packets.udp(rng, *V4, 53, b"query"),
        packets.udp(rng, *V6, 53, b"query6"),
        packets.udp(rng, *V4, 53, b"nocsum", zero_checksum=True),
        packets.icmp_echo(rng, *V4, payload=b"ping"),
        packets.icmp_echo(rng, *V6, payload=b"ping6"),
        packets.udp(rng, *V4, 53, b"opts", ip_options=packets.ROUTER_ALERT),
        packets.with_hop_by_hop(packets.udp(rng, *V6, 53, b"hbh")),
        packets.icmp_error(packets.tcp_syn(rng, *V4, 22), reporter="10.201.1.1"),
        packets.icmp_error(
            packets.tcp_syn(rng, *V6, 22), reporter="fd00:201:1::1", kind="frag-needed", mtu=1280
        ),
        *packets.fragments(rng, packets.udp(rng, *V4, 9, rng.randbytes(2000)), 800),
    ]
    return [bytes(p) for p in built]


def test_good_capture_passes_and_counts_every_packet(rng: random.Random, tmp_path: Path) -> None:
    good = _good_packets(rng)
    pcap = write_pcap(tmp_path / "good.pcap", good)
    assert assert_checksums_ok(pcap) == len(good)


def test_bad_checksums_are_caught_with_index_summary_and_expected_value(
    rng: random.Random, tmp_path: Path
) -> None:
    good_syn = packets.tcp_syn(rng, *V4, 80, sport=40000)
    bad = [
        bytes(packets.with_bad_ip_checksum(rng, good_syn)),
        bytes(packets.with_bad_l4_checksum(rng, good_syn)),
        bytes(packets.with_bad_l4_checksum(rng, packets.udp(rng, *V6, 53, b"q", sport=5000))),
        bytes(packets.with_bad_l4_checksum(rng, packets.icmp_echo(rng, *V4))),
        bytes(packets.with_bad_l4_checksum(rng, packets.icmp_echo(rng, *V6))),
    ]
    frames = [bytes(good_syn), *bad]
    pcap = write_pcap(tmp_path / "bad.pcap", frames)
    with pytest.raises(AssertionError) as info:
        assert_checksums_ok(pcap)
    message = str(info.value)
    assert message.startswith(f"5 of 6 packets in {pcap} have bad checksums:")
    assert "#1 " not in message  # the good one is not listed
    assert re.search(
        r"#2 IPv4 10\.200\.1\.1:40000 > 10\.201\.1\.2:80 TCP \[S\] len=\d+: "
        r"IPv4 header checksum 0x[0-9a-f]{4}, expected 0x[0-9a-f]{4}",
        message,
    )
    assert re.search(r"#3 .* TCP checksum 0x[0-9a-f]{4}, expected 0x[0-9a-f]{4}", message)
    assert re.search(r"#4 IPv6 \[fd00:200:1::1\]:5000 > .* UDP checksum", message)
    assert re.search(r"#5 IPv4 .* ICMP type=8 .*ICMP checksum", message)
    assert re.search(r"#6 IPv6 .* ICMPv6 type=128 .*ICMPv6 checksum", message)
    assert f"first bad packet (#2) hex: {bad[0].hex()}" in message


def test_expected_value_in_message_is_the_true_checksum(rng: random.Random) -> None:
    """Our independent 'expected' equals what scapy computes for the same packet."""
    good = packets.tcp(rng, *V4, 80, flags="PA", payload=b"hello")
    true_checksum = IP(bytes(good))[TCP].chksum
    bad = bytes(packets.with_bad_l4_checksum(rng, good))
    (problem,) = verify_checksums(bad).problems
    assert problem.endswith(f"expected 0x{true_checksum:04x}")


def test_where_filter_skips_deliberately_broken_packets(rng: random.Random, tmp_path: Path) -> None:
    injected = packets.with_bad_l4_checksum(rng, packets.udp(rng, *V4, 9999, b"junk"))
    pcap = write_pcap(
        tmp_path / "mixed.pcap", [bytes(packets.udp(rng, *V4, 53, b"ok")), bytes(injected)]
    )
    assert assert_checksums_ok(pcap, where=lambda p: p.dport != 9999) == 1


def test_truncated_and_garbage_frames(rng: random.Random, tmp_path: Path) -> None:
    frames = [
        packets.truncated(rng, packets.tcp_syn(rng, *V4, 80), keep=10),
        packets.garbage(rng, 30, version=9),
    ]
    pcap = write_pcap(tmp_path / "junk.pcap", frames)
    with pytest.raises(AssertionError) as info:
        assert_checksums_ok(pcap)
    assert "#1 undecodable (IPv4 header truncated (10 bytes))" in str(info.value)
    assert "#2 undecodable (IP version 9)" in str(info.value)


def test_snaplen_cut_is_unverified_not_bad(rng: random.Random) -> None:
    """A capture with a small snaplen cuts payloads: the L4 sum is unverifiable, not wrong."""
    raw = bytes(packets.tcp(rng, *V4, 80, flags="PA", payload=rng.randbytes(500)))
    verdict = verify_checksums(raw[:100])
    assert verdict.problems == ()
    assert verdict.unverified == ("TCP checksum: 100 of 540 bytes captured",)


def test_offloaded_partial_checksum_is_accepted_only_when_asked(rng: random.Random) -> None:
    raw = bytearray(bytes(packets.tcp(rng, *V4, 80, flags="PA", payload=b"data")))
    pseudo = pseudo_header(bytes(raw[12:16]), bytes(raw[16:20]), 6, len(raw) - 20)
    raw[36:38] = ones_sum(pseudo).to_bytes(2, "big")  # what CHECKSUM_PARTIAL leaves
    assert verify_checksums(bytes(raw)).problems
    verdict = verify_checksums(bytes(raw), allow_offload=True)
    assert verdict.problems == () and verdict.offloaded


def test_empty_capture_is_not_a_vacuous_pass(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "empty.pcap", [])
    with pytest.raises(AssertionError, match="0 IP packets to check, expected at least 1"):
        assert_checksums_ok(pcap)
    assert assert_checksums_ok(pcap, min_packets=0) == 0


def test_reads_ethernet_pcap_and_pcapng_written_by_scapy(
    rng: random.Random, tmp_path: Path
) -> None:
    frames = [Ether() / packets.tcp_syn(rng, *V4, 80), Ether() / packets.udp(rng, *V6, 53, b"x")]
    classic = tmp_path / "eth.pcap"
    wrpcap(str(classic), frames)
    assert [f.linktype for f in read_pcap(classic)] == [LINKTYPE_ETHERNET] * 2
    assert assert_checksums_ok(classic) == 2
    bad = Ether() / packets.with_bad_l4_checksum(rng, packets.udp(rng, *V4, 53, b"y"))
    ng = tmp_path / "eth.pcapng"
    from scapy.utils import PcapNgWriter

    with PcapNgWriter(str(ng)) as writer:
        for frame in [*frames, bad]:
            writer.write(frame)
    with pytest.raises(AssertionError, match=r"#3 IPv4 .* UDP checksum"):
        assert_checksums_ok(ng)


# --------------------------------------------------------------------------- routing


def test_routed_via_passes_when_flow_only_on_via(rng: random.Random, tmp_path: Path) -> None:
    syn = packets.tcp_syn(rng, *V4, 7, sport=41000)
    synack = packets.tcp(rng, V4[1], V4[0], 41000, sport=7, flags="SA")
    other = packets.tcp_syn(rng, "10.200.1.1", "10.200.1.2", 1080)  # the proxy leg
    pcaps = {
        "tun0": write_pcap(tmp_path / "tun0.pcap", [bytes(syn), bytes(synack)]),
        "veth0": write_pcap(tmp_path / "veth0.pcap", [bytes(other)]),
    }
    flow = Flow("tcp", dst=V4[1], dport=7)
    assert assert_routed_via(pcaps, flow, via="tun0") == 2


def test_routed_via_reports_a_leak(rng: random.Random, tmp_path: Path) -> None:
    syn = packets.tcp_syn(rng, *V4, 7, sport=41000)
    pcaps = {
        "tun0": write_pcap(tmp_path / "tun0.pcap", [bytes(syn)]),
        "veth0": write_pcap(tmp_path / "veth0.pcap", [bytes(syn), bytes(syn)]),
    }
    with pytest.raises(AssertionError) as info:
        assert_routed_via(pcaps, Flow("tcp", dst=V4[1], dport=7), via="tun0")
    assert str(info.value).startswith(
        "flow tcp * <> 10.201.1.2:7 leaked on veth0: 2 of 2 packets\n"
        "    #1 IPv4 10.200.1.1:41000 > 10.201.1.2:7 TCP [S]"
    )


def test_routed_via_reports_absence(rng: random.Random, tmp_path: Path) -> None:
    pcaps = {"tun0": write_pcap(tmp_path / "tun0.pcap", [bytes(packets.udp(rng, *V6, 53, b"x"))])}
    with pytest.raises(
        AssertionError,
        match=r"flow udp \* <> \[fd00:201:1::2\]:9 not seen on "
        r"tun0: 0 of 1 captured packets matched",
    ):
        assert_routed_via(pcaps, Flow("udp", dst=V6[1], dport=9), via="tun0")
    with pytest.raises(AssertionError, match="no capture for interface 'eth9'"):
        assert_routed_via(pcaps, Flow("udp"), via="eth9")


def test_flow_matching_normalises_ipv6_text(rng: random.Random) -> None:
    from harness.decode import decode_ip

    pkt = decode_ip(bytes(packets.icmp_echo(rng, *V6)))
    assert Flow("icmp", dst="fd00:201:1:0:0:0:0:2").matches(pkt)
    assert not Flow("icmp", dst="fd00:201:1::2", both_directions=False, src=V6[1]).matches(pkt)


# --------------------------------------------------------------------------- SOCKS5 round trip


class _FakeRecorder:
    """Stands in for the recording server with fixed records."""

    def __init__(self, requests: list[Socks5Request]) -> None:
        self._requests = requests

    def requests(self) -> list[Socks5Request]:
        return self._requests


def _connect_request(sent: bytes, received: bytes) -> Socks5Request:
    return Socks5Request(
        id=1,
        time=0.0,
        client="10.200.1.1:5000",
        command="CONNECT",
        target_host="10.201.1.2",
        target_port=7,
        target_atyp="ipv4",
        user=None,
        reply=0,
        reply_name="succeeded",
        bound="10.201.1.1:6000",
        closed=True,
        end="eof",
        bytes_to_target=len(sent),
        bytes_from_target=len(received),
        sha256_to_target=hashlib.sha256(sent).hexdigest(),
        sha256_from_target=hashlib.sha256(received).hexdigest(),
        udp={},
    )


def test_roundtrip_matches_connect() -> None:
    recorder = _FakeRecorder([_connect_request(b"up", b"down")])
    found = assert_socks5_roundtrip(
        recorder,
        ("10.201.1.2", 7),
        hashlib.sha256(b"up").hexdigest(),
        hashlib.sha256(b"down").hexdigest(),
    )
    assert found.id == 1


def test_roundtrip_mismatch_lists_what_the_proxy_saw() -> None:
    recorder = _FakeRecorder([_connect_request(b"up", b"tampered")])
    with pytest.raises(AssertionError) as info:
        assert_socks5_roundtrip(
            recorder,
            "10.201.1.2:7",
            hashlib.sha256(b"up").hexdigest(),
            hashlib.sha256(b"down").hexdigest(),
            timeout=0.05,
        )
    message = str(info.value)
    assert "the proxy relayed no CONNECT or UDP ASSOCIATE round trip to 10.201.1.2:7" in message
    assert "the proxy saw 1 request(s):" in message
    assert (
        f"#1 CONNECT 10.201.1.2:7 from 10.200.1.1:5000 -> succeeded, closed (eof), "
        f"to_target 2 B sha256 {hashlib.sha256(b'up').hexdigest()}"
    ) in message


def test_roundtrip_matches_udp_per_target() -> None:
    digest = hashlib.sha256(b"q").hexdigest()
    request = Socks5Request(
        id=2,
        time=0.0,
        client="10.200.1.1:5000",
        command="UDP ASSOCIATE",
        target_host="::1",
        target_port=0,
        target_atyp="ipv6",
        user=None,
        reply=0,
        reply_name="succeeded",
        bound="10.200.1.2:7000",
        closed=False,
        end=None,
        bytes_to_target=0,
        bytes_from_target=0,
        sha256_to_target=None,
        sha256_from_target=None,
        udp={
            "[fd00:201:1::2]:53": UdpTargetStats("[fd00:201:1::2]:53", 1, 1, digest, 1, 1, digest)
        },
    )
    recorder = _FakeRecorder([request])
    assert (
        assert_socks5_roundtrip(
            recorder, "[fd00:201:1::2]:53", digest, digest, command="UDP ASSOCIATE"
        ).id
        == 2
    )
    with pytest.raises(AssertionError, match="no CONNECT round trip"):
        assert_socks5_roundtrip(
            recorder, "[fd00:201:1::2]:53", digest, digest, command="CONNECT", timeout=0.05
        )
