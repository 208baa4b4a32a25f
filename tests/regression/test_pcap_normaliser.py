"""The canonicaliser, the tiers, profiles and the diff, on small synthetic pcaps (no root).

Each test builds two captures that differ only in what a rerun changes (ports, ISNs,
timestamps, IP ids, MACs, interleaving, segmentation) and checks they canonicalise the
same -- and that a real change (a payload byte, a checksum, a missing FIN) does not.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from harness.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    ones_sum,
    pseudo_header,
    read_pcap,
    write_pcap,
)
from harness.pcap import (
    CanonicalText,
    Golden,
    GoldenError,
    ProfileError,
    assertrepr_compare,
    canonicalise,
    compare,
    expectation_failures,
    load_profile,
    relative_timestamps,
    semantic_text,
)
from harness.pcap.profile import parse_profile

A, B = "10.0.0.1", "10.0.0.2"
SERVICE = 5002
SEMANTIC = {"tier": "semantic", "why": "test", "ports": {"keep": [SERVICE], "why": "test"}}
STRICT = {"tier": "strict", "why": "test", "ports": {"keep": [SERVICE], "why": "test"}}


def seg(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: str,
    seq: int,
    ack: int = 0,
    payload: bytes = b"",
    *,
    ident: int = 1,
    ts: tuple[int, int] | None = None,
    window: int = 64240,
) -> bytes:
    options = [("MSS", 1460), ("Timestamp", ts)] if ts else []
    if "S" in flags and not ts:
        options = [("MSS", 1460)]
    packet = IP(src=src, dst=dst, id=ident, flags="DF") / TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window, options=options
    )
    return bytes(packet / Raw(payload)) if payload else bytes(packet)


def connection(
    port: int,
    isn_a: int,
    isn_b: int,
    ids: int,
    ts: int,
    *,
    data: bytes = b"hello",
    fin: bool = True,
) -> list[bytes]:
    """A whole exchange as one run of the kernel would send it: handshake, data, close."""
    c, s = isn_a, isn_b
    packets = [
        seg(A, B, port, SERVICE, "S", c, ident=ids, ts=(ts, 0)),
        seg(B, A, SERVICE, port, "SA", s, c + 1, ident=0, ts=(ts + 7, ts)),
        seg(A, B, port, SERVICE, "A", c + 1, s + 1, ident=ids + 1, ts=(ts + 1, ts + 7)),
        seg(A, B, port, SERVICE, "PA", c + 1, s + 1, data, ident=ids + 2, ts=(ts + 1, ts + 7)),
        seg(
            B,
            A,
            SERVICE,
            port,
            "PA",
            s + 1,
            c + 1 + len(data),
            data,
            ident=ids + 3,
            ts=(ts + 8, ts + 1),
        ),
    ]
    if fin:
        end_c, end_s = c + 1 + len(data), s + 1 + len(data)
        packets += [
            seg(A, B, port, SERVICE, "FA", end_c, end_s, ident=ids + 4, ts=(ts + 2, ts + 8)),
            seg(B, A, SERVICE, port, "FA", end_s, end_c + 1, ident=ids + 5, ts=(ts + 9, ts + 2)),
            seg(A, B, port, SERVICE, "A", end_c + 1, end_s + 1, ident=ids + 6, ts=(ts + 3, ts + 9)),
        ]
    return packets


def pcap(tmp_path: Path, name: str, packets: Sequence[bytes], linktype: int = LINKTYPE_RAW) -> Path:
    return write_pcap(tmp_path / f"{name}.pcap", packets, linktype)


def strict(path: Path, **extra: object) -> str:
    return canonicalise(path, parse_profile({**STRICT, **extra})).text()


# --------------------------------------------------------------------------- mapping


def test_a_rerun_canonicalises_the_same(tmp_path: Path) -> None:
    first = pcap(tmp_path, "a", connection(40001, 1000, 900000, 300, 5000))
    second = pcap(tmp_path, "b", connection(51234, 77777777, 12, 9000, 123456789))
    assert strict(first) == strict(second)
    text = strict(first)
    assert "10.0.0.1.P1 > 10.0.0.2.5002: Flags [S], seq 0" in text
    assert "Flags [S.], seq 0, ack 1" in text
    assert "TS val T1 ecr 0" in text and "TS val T2 ecr T1" in text
    assert "(id I1, ttl 64, DF)" in text and "(id 0, ttl 64, DF)" in text


def test_a_payload_byte_changes_the_trace(tmp_path: Path) -> None:
    good = pcap(tmp_path, "a", connection(40001, 1, 2, 3, 4, data=b"hello"))
    bad = pcap(tmp_path, "b", connection(40001, 1, 2, 3, 4, data=b"hellO"))
    assert strict(good) != strict(bad)
    assert "5 bytes #" in strict(good)


def test_macs_are_mapped_by_first_appearance(tmp_path: Path) -> None:
    def framed(src_mac: bytes, dst_mac: bytes, packets: list[bytes]) -> list[bytes]:
        frames = []
        for i, p in enumerate(packets):
            s, d = (src_mac, dst_mac) if p[12:16] == bytes([10, 0, 0, 1]) else (dst_mac, src_mac)
            frames.append(d + s + struct.pack("!H", 0x0800) + p)
            if i == 0:
                frames.append(b"\xff" * 6 + s + struct.pack("!H", 0x0800) + p)
        return frames

    one = framed(b"\x02" * 6, b"\x04" * 6, connection(40001, 1, 2, 3, 4))
    two = framed(b"\x06" * 6, b"\x0a" * 6, connection(40002, 5, 6, 7, 8))
    a = pcap(tmp_path, "a", one, LINKTYPE_ETHERNET)
    b = pcap(tmp_path, "b", two, LINKTYPE_ETHERNET)
    assert strict(a) == strict(b)
    assert "M1 > M2, IP" in strict(a) and "M1 > ff:ff:ff:ff:ff:ff, IP" in strict(a)


def test_flows_are_compared_each_in_its_own_order(tmp_path: Path) -> None:
    x = connection(40001, 1, 2, 100, 10)
    y = connection(40002, 3, 4, 200, 20)
    interleaved = [p for pair in zip(x, y, strict=True) for p in pair]
    one_then_other = x + y
    # The same two exchanges, woven differently: the same trace.
    assert strict(pcap(tmp_path, "a", interleaved)) == strict(pcap(tmp_path, "b", one_then_other))


def test_addresses_are_kept_unless_the_profile_names_them(tmp_path: Path) -> None:
    path = pcap(tmp_path, "a", connection(40001, 1, 2, 3, 4))
    assert "10.0.0.2.5002" in strict(path)
    named = strict(path, addresses={"why": "test", "map": {B: "server"}})
    assert "server.5002" in named and "10.0.0.2" not in named


# --------------------------------------------------------------------------- checksums


def test_a_bad_checksum_is_reported_and_otherwise_left_out(tmp_path: Path) -> None:
    packets = connection(40001, 1, 2, 3, 4)
    broken = bytearray(packets[3])
    broken[36] ^= 0x01  # TCP checksum (20 bytes of IP, checksum at 16)
    bad = pcap(tmp_path, "bad", [*packets[:3], bytes(broken), *packets[4:]])
    text = strict(bad)
    assert "bad checksums: 1" in text
    assert "[bad tcp cksum]" in text
    assert "0x" not in text  # values are not compared: they follow the mapped fields


def _partial(packet: bytes) -> bytes:
    """What tcpdump sees of a CHECKSUM_PARTIAL segment: the bare pseudo-header sum."""
    out = bytearray(packet)
    l4 = out[20:]
    pseudo = pseudo_header(bytes(out[12:16]), bytes(out[16:20]), 6, len(l4))
    out[36:38] = struct.pack("!H", ones_sum(pseudo))
    return bytes(out)


def test_partial_checksums_count_only_where_the_profile_allows_offload(tmp_path: Path) -> None:
    path = pcap(tmp_path, "p", [_partial(p) for p in connection(40001, 1, 2, 3, 4)])
    assert "[partial tcp cksum]" in strict(path)
    allowed = strict(path, checksums={"offloaded": ["tcp"], "why": "test"})
    assert "bad checksums: 0" in allowed and "partial" not in allowed


# --------------------------------------------------------------------------- tiers


def test_semantic_tier_ignores_acks_windows_and_retransmissions(tmp_path: Path) -> None:
    base = connection(40001, 1, 2, 3, 4)
    noisy = connection(40009, 50, 60, 70, 80)
    ack = seg(B, A, SERVICE, 40009, "A", 61, 56, ident=99, window=1000, ts=(1, 2))
    retransmitted = noisy[3]
    noisy = [*noisy[:4], ack, retransmitted, *noisy[4:]]
    profile = parse_profile(SEMANTIC)
    a = canonicalise(pcap(tmp_path, "a", base), profile)
    b = canonicalise(pcap(tmp_path, "b", noisy), profile)
    assert a.text() != b.text()
    assert semantic_text(a) == semantic_text(b)
    assert "> control S@0 FA@6" in semantic_text(a)
    assert "< control SA@0 FA@6" in semantic_text(a)
    assert "retransmission 5 bytes" in b.text()


def test_semantic_tier_catches_a_missing_fin(tmp_path: Path) -> None:
    whole = connection(40001, 1, 2, 3, 4)
    no_server_fin = [p for i, p in enumerate(whole) if i != 6]
    result = compare(
        pcap(tmp_path, "a", whole), pcap(tmp_path, "b", no_server_fin), parse_profile(SEMANTIC)
    )
    assert not result.equal
    assert "-  < control SA@0 FA@6" in result.report()
    assert "+  < control SA@0" in result.report()


def test_masks_hide_what_they_name(tmp_path: Path) -> None:
    path = pcap(tmp_path, "a", connection(40001, 1, 2, 3, 4))
    masks = [{"field": f, "why": "test"} for f in ("tcp.window", "tcp.ts", "ip.id", "payload")]
    text = strict(path, mask=masks)
    assert "win *" in text and "TS val * ecr *" in text and "(id *, ttl 64, DF)" in text
    assert "5 bytes" in text and "#" not in text
    no_acks = strict(path, mask=[{"field": "tcp.pure-acks", "why": "test"}])
    assert "Flags [.]" not in no_acks


# --------------------------------------------------------------------------- payloads


def test_socks5_is_decoded_with_canonical_ports(tmp_path: Path) -> None:
    proxy, client = "10.0.0.2", "10.0.0.1"
    c, s = 100, 5000

    def up(seq: int, data: bytes, ack: int) -> bytes:
        return seg(client, proxy, 45000, 1080, "PA", seq, ack, data, ident=seq)

    def down(seq: int, data: bytes, ack: int) -> bytes:
        return seg(proxy, client, 1080, 45000, "PA", seq, ack, data, ident=seq)

    greeting, method = b"\x05\x01\x00", b"\x05\x00"
    request = b"\x05\x01\x00\x01" + bytes([10, 9, 8, 7]) + struct.pack("!H", 80)
    reply = b"\x05\x00\x00\x01" + bytes([10, 9, 8, 1]) + struct.pack("!H", 61000)
    packets = [
        seg(client, proxy, 45000, 1080, "S", c),
        seg(proxy, client, 1080, 45000, "SA", s, c + 1),
        up(c + 1, greeting, s + 1),
        down(s + 1, method, c + 4),
        up(c + 4, request, s + 3),
        down(s + 3, reply + b"early", c + 14),
    ]
    text = strict(pcap(tmp_path, "s", packets), ports={"keep": [1080], "why": "test"})
    assert "flow 1: tcp 10.0.0.1.P1 > 10.0.0.2.1080" in text
    assert "| socks5 greeting [no-auth]" in text
    assert "| socks5 request CONNECT 10.9.8.7.80" in text
    assert "| socks5 reply succeeded bound 10.9.8.1.P2; 5 bytes #" in text


def test_udp_and_icmp_errors_share_a_flow(tmp_path: Path) -> None:
    datagram = bytes(IP(src=A, dst=B, id=5) / UDP(sport=40000, dport=53) / Raw(b"q" * 12))
    from scapy.layers.inet import ICMP

    error = bytes(IP(src=B, dst=A, id=0) / ICMP(type=3, code=3) / Raw(datagram))
    trace = canonicalise(pcap(tmp_path, "u", [datagram, error]))
    assert len(trace.flows) == 1
    assert "ICMP port unreachable (id 0, ttl 64) | quoting udp 10.0.0.1.P1 > 10.0.0.2.53" in (
        trace.text()
    )


def test_neighbour_discovery_and_arp_map_their_link_addresses(tmp_path: Path) -> None:
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether

    def frames(mac: str) -> list[bytes]:
        return [
            bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=mac, psrc=A, pdst=B)),
            bytes(
                Ether(src="02:00:00:00:00:99", dst=mac)
                / ARP(op=2, hwsrc="02:00:00:00:00:99", psrc=B, pdst=A, hwdst=mac)
            ),
            bytes(
                Ether(src=mac, dst="33:33:ff:00:00:02")
                / IPv6(src="fd00::1", dst="ff02::1:ff00:2", hlim=255)
                / ICMPv6ND_NS(tgt="fd00::2")
                / ICMPv6NDOptSrcLLAddr(lladdr=mac)
            ),
        ]

    one = strict(pcap(tmp_path, "a", frames("02:00:00:00:00:01"), LINKTYPE_ETHERNET))
    two = strict(pcap(tmp_path, "b", frames("02:00:00:00:00:07"), LINKTYPE_ETHERNET))
    assert one == two
    assert "ARP, Request who-has 10.0.0.2 tell 10.0.0.1" in one
    assert "ARP, Reply 10.0.0.2 is-at M2" in one
    assert "ICMP6 neighbor solicitation, tgt fd00::2, lladdr M1" in one


def test_undecodable_bytes_are_shown_not_dropped(tmp_path: Path) -> None:
    text = strict(pcap(tmp_path, "g", [b"\x45\x00", b"\x9c" + bytes(23)]))
    assert "undecodable (IPv4 header truncated (2 bytes))" in text
    assert "undecodable (IP version 9)" in text


# --------------------------------------------------------------------------- profiles


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"tier": "strict"}, "why"),
        ({"tier": "fuzzy", "why": "x"}, "tier"),
        ({"tier": "strict", "why": "x", "colour": 1}, "unknown key"),
        ({"tier": "strict", "why": "x", "mask": [{"field": "tcp.window"}]}, "why"),
        ({"tier": "strict", "why": "x", "mask": [{"field": "tcp.colour", "why": "y"}]}, "field"),
        (
            {"tier": "strict", "why": "x", "predicate": [{"count": "tcp.flags = SA", "why": "y"}]},
            "cannot read",
        ),
        ({"tier": "strict", "why": "x", "checksums": {"offloaded": ["tcp"]}}, "why"),
        (
            {"tier": "strict", "why": "x", "addresses": {"why": "y", "map": {"nope": "n"}}},
            "not an IP",
        ),
    ],
)
def test_a_profile_must_say_why_and_mean_it(data: dict[str, object], complaint: str) -> None:
    with pytest.raises(ProfileError, match=complaint):
        parse_profile(data, source="t.toml")


def test_expectations_are_checked_against_the_capture(tmp_path: Path) -> None:
    path = pcap(tmp_path, "a", connection(40001, 1, 2, 3, 4))
    profile = parse_profile(
        {
            **SEMANTIC,
            "predicate": [
                {"count": "tcp.flags == SA", "expect": 1, "why": "one handshake"},
                {"count": "tcp.flags == FA and len == 0", "expect": 3, "why": "deliberately wrong"},
                {"all": "checksum == ok", "expect": True, "why": "clean"},
            ],
        }
    )
    trace = canonicalise(path, profile)
    assert "count(tcp.flags == SA) = 1" in semantic_text(trace)
    assert expectation_failures(trace) == [
        "count(tcp.flags == FA and len == 0) = 2, profile expects 3 (deliberately wrong)"
    ]


# --------------------------------------------------------------------------- goldens, diff, CLI


def test_golden_record_and_compare(tmp_path: Path) -> None:
    folder = tmp_path / "pcaps"
    folder.mkdir()
    (folder / "x.toml").write_text(
        'tier = "semantic"\nwhy = "test"\n[ports]\nkeep = [5002]\nwhy = "test"\n'
    )
    golden = Golden(folder, "x")
    golden.record(pcap(tmp_path, "first", connection(40001, 1, 2, 3, 4)))
    assert not golden.stale_text()
    assert "== semantic" in golden.text_path.read_text()
    assert all(f.timestamp == 0 for f in read_pcap(golden.pcap))
    assert golden.compare(pcap(tmp_path, "rerun", connection(40002, 9, 8, 7, 6))).equal
    missing_fin = connection(40002, 9, 8, 7, 6)[:-2]
    assert not golden.compare(pcap(tmp_path, "broken", missing_fin)).equal


def test_a_golden_without_a_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GoldenError, match="every golden needs a profile"):
        Golden(tmp_path, "nothing").profile()


def test_relative_timestamps_keep_spacing(tmp_path: Path) -> None:
    path = pcap(tmp_path, "t", [b"\x45" + bytes(19)] * 3)
    raw = bytearray(path.read_bytes())
    for i, (sec, usec) in enumerate([(1700000000, 999999), (1700000001, 1), (1700000002, 5)]):
        struct.pack_into("<II", raw, 24 + i * 36, sec, usec)
    rebased = _write(tmp_path / "r.pcap", relative_timestamps(bytes(raw)))
    stamps = [f.timestamp for f in read_pcap(rebased)]
    assert stamps == pytest.approx([0.0, 0.000002, 1.000006])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_assertrepr_gives_a_unified_diff() -> None:
    left = CanonicalText("golden x", "a\nb\nc\n", "strict")
    right = CanonicalText("actual x", "a\nB\nc\n", "strict")
    lines = assertrepr_compare("==", left, right)
    assert lines is not None
    assert lines[0] == "canonical strict trace: golden x != actual x"
    assert "-b" in lines and "+B" in lines
    assert assertrepr_compare("==", "a", "b") is None


def test_cli_diff_exit_status_and_output(tmp_path: Path) -> None:
    a = pcap(tmp_path, "a", connection(40001, 1, 2, 3, 4))
    same = pcap(tmp_path, "same", connection(40002, 5, 6, 7, 8))
    other = pcap(tmp_path, "other", connection(40002, 5, 6, 7, 8, fin=False))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "harness", "pcap", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert run("diff", str(a), str(same)).returncode == 0
    different = run("diff", str(a), str(other), "--tier", "semantic")
    assert different.returncode == 1
    assert "--- expected a.pcap" in different.stdout and "-  > control S@0 FA@6" in (
        different.stdout
    )
    assert run("diff", str(a), str(tmp_path / "missing.pcap")).returncode == 2
    usage = run("diff", str(a))  # named as the command the user typed is named
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: ztun-harness pcap diff"), usage.stderr
    profile = tmp_path / "bad.toml"
    profile.write_text('tier = "strict"\n')
    assert run("diff", str(a), str(same), "--profile", str(profile)).returncode == 2
    with pytest.raises(ProfileError, match="why"):
        load_profile(profile)
