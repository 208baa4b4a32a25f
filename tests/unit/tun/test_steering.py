"""Queue steering: `steering_key` rule by rule, then the eBPF program against it.

The first half needs nothing: it pins the function down on hand-built packets (and
scapy-built ones, so the byte layout is not only checked against itself). The second
half loads the assembled program into the kernel and runs it with BPF_PROG_TEST_RUN on
the edge cases and on generated packets: root only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop

from ztun.tun import steering
from ztun.tun.steering import source_hash, steering_key, steering_program

PEER4 = ipaddress.IPv4Address("198.18.0.2")
PEER6 = ipaddress.IPv6Address("fd00::2")
SRC4 = ipaddress.IPv4Address("198.18.0.1")
SRC6 = ipaddress.IPv6Address("fd00::1")
FAKE4 = ipaddress.IPv4Network("198.19.0.0/16")
FAKE6 = ipaddress.IPv6Network("fc00::/18")
PINNED: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [FAKE4, FAKE6]
TCP_, UDP_, ICMP_ = 6, 17, 1


@dataclass(frozen=True)
class Config:
    peer4: bytes | None = PEER4.packed
    peer6: bytes | None = PEER6.packed
    pinned: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    pin_dns: bool = False

    def key(self, packet: bytes) -> int:
        return steering_key(
            packet, peer4=self.peer4, peer6=self.peer6, pinned=self.pinned, pin_dns=self.pin_dns
        )

    def program(self) -> bytes:
        return steering_program(
            peer4=self.peer4, peer6=self.peer6, pinned=self.pinned, pin_dns=self.pin_dns
        )


PLAIN = Config()
FAKE_IP = Config(pinned=tuple(PINNED), pin_dns=True)


# --------------------------------------------------------------------------- packets


def ipv4(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    proto: int,
    payload: bytes,
    *,
    options: bytes = b"",
    frag: int = 0,
    ihl: int | None = None,
) -> bytes:
    assert len(options) % 4 == 0
    header_len = 20 + len(options)
    ver_ihl = (4 << 4) | (ihl if ihl is not None else header_len // 4)
    fixed = struct.pack(
        "!BBHHHBBH4s4s",
        ver_ihl,
        0,
        header_len + len(payload),
        0x1234,
        frag,
        64,
        proto,
        0,
        src.packed,
        dst.packed,
    )
    return fixed + options + payload


def ipv6(
    src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, next_header: int, payload: bytes
) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, src.packed, dst.packed)
        + payload
    )


def l4(sport: int, dport: int, rest: bytes = bytes(16)) -> bytes:
    return struct.pack("!HH", sport, dport) + rest


def mixed(sport: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return source_hash(sport, int(addr) & 0xFFFF)


# --------------------------------------------------------------------------- the function


def test_rule1_tcp_to_the_peer_gives_the_destination_port() -> None:
    assert PLAIN.key(ipv4(SRC4, PEER4, TCP_, l4(443, 40001))) == 40001
    assert PLAIN.key(ipv6(SRC6, PEER6, TCP_, l4(443, 40002))) == 40002
    # the listener's answer as the kernel writes it, built by scapy
    assert PLAIN.key(bytes(IP(src=str(SRC4), dst=str(PEER4)) / TCP(sport=80, dport=3))) == 3
    assert PLAIN.key(bytes(IPv6(src=str(SRC6), dst=str(PEER6)) / TCP(sport=80, dport=7))) == 7


def test_rule1_is_tcp_only_and_needs_a_peer() -> None:
    udp = ipv4(SRC4, PEER4, UDP_, l4(443, 40001))
    assert PLAIN.key(udp) == mixed(443, SRC4)
    tcp = ipv4(SRC4, PEER4, TCP_, l4(443, 40001))
    assert Config(peer4=None).key(tcp) == mixed(443, SRC4)
    tcp6 = ipv6(SRC6, PEER6, TCP_, l4(443, 40001))
    assert Config(peer6=None).key(tcp6) == mixed(443, SRC6)


def test_rule1_beats_pinned_and_ipv4_options_move_the_ports() -> None:
    cfg = Config(pinned=(ipaddress.IPv4Network("198.18.0.0/15"),))
    options = bytes([7, 7, 4]) + bytes(5)  # a record-route option, padded to 8 bytes
    packet = ipv4(SRC4, PEER4, TCP_, l4(1, 2345), options=options)
    assert packet[0] & 0x0F == 7
    assert cfg.key(packet) == 2345


@pytest.mark.parametrize(
    ("packet", "outside"),
    [
        (
            ipv4(SRC4, ipaddress.IPv4Address("198.19.200.9"), TCP_, l4(5000, 80)),
            ipv4(SRC4, ipaddress.IPv4Address("198.20.0.0"), TCP_, l4(5000, 80)),
        ),
        (
            ipv4(SRC4, ipaddress.IPv4Address("198.19.0.0"), UDP_, l4(5000, 443)),
            ipv4(SRC4, ipaddress.IPv4Address("198.18.255.255"), UDP_, l4(5000, 443)),
        ),
        (
            ipv6(SRC6, ipaddress.IPv6Address("fc00:3fff::1"), TCP_, l4(5000, 80)),
            ipv6(SRC6, ipaddress.IPv6Address("fc00:4000::1"), TCP_, l4(5000, 80)),
        ),
    ],
    ids=["v4-tcp", "v4-udp-edges", "v6-tcp"],
)
def test_rule2_pinned_destinations_go_to_0(packet: bytes, outside: bytes) -> None:
    assert FAKE_IP.key(packet) == 0
    assert PLAIN.key(packet) == mixed(5000, SRC4 if packet[0] >> 4 == 4 else SRC6) != 0
    assert FAKE_IP.key(outside) == PLAIN.key(outside) != 0


@pytest.mark.parametrize("proto", [TCP_, UDP_])
def test_rule3_dns_goes_to_0_only_with_pin_dns(proto: int) -> None:
    dst4, dst6 = ipaddress.IPv4Address("9.9.9.9"), ipaddress.IPv6Address("2001:db8::53")
    for packet, src in (
        (ipv4(SRC4, dst4, proto, l4(40000, 53)), SRC4),
        (ipv6(SRC6, dst6, proto, l4(40000, 53)), SRC6),
    ):
        assert FAKE_IP.key(packet) == 0
        assert PLAIN.key(packet) == mixed(40000, src) != 0
    answer = ipv4(SRC4, dst4, proto, l4(53, 40000))  # source port 53 is not DNS to pin
    assert FAKE_IP.key(answer) == mixed(53, SRC4)


def test_rule4_same_function_for_tcp_and_udp() -> None:
    src = ipaddress.IPv4Address("10.1.2.3")
    dst = ipaddress.IPv4Address("93.184.216.34")
    for sport in (0, 1, 1024, 0x0203, 40000, 65535):
        want = source_hash(sport, 0x0203)
        assert PLAIN.key(ipv4(src, dst, TCP_, l4(sport, 443))) == want
        assert PLAIN.key(ipv4(src, dst, UDP_, l4(sport, 443))) == want
        # the destination does not matter: a full-cone UDP session is keyed by source
        assert PLAIN.key(ipv4(src, SRC4, UDP_, l4(sport, 9))) == want
    scapy_udp = bytes(IP(src="10.1.2.3", dst="1.1.1.1") / UDP(sport=4660, dport=53))
    assert PLAIN.key(scapy_udp) == source_hash(4660, 0x0203)
    src6 = ipaddress.IPv6Address("2001:db8::abcd")
    assert PLAIN.key(ipv6(src6, PEER6, UDP_, l4(0xABCD, 1))) == 0
    assert PLAIN.key(ipv6(src6, PEER6, UDP_, l4(0x1111, 1))) == source_hash(0x1111, 0xABCD)


def test_rule4_honours_ipv4_options() -> None:
    dst = ipaddress.IPv4Address("1.2.3.4")
    for words in range(1, 11):
        # the options are filled with what would be wrong ports if read as such
        packet = ipv4(SRC4, dst, UDP_, l4(777, 9), options=b"\x01\x02\x03\x04" * words)
        assert PLAIN.key(packet) == mixed(777, SRC4)
    scapy_opts = bytes(
        IP(src=str(SRC4), dst=str(dst), options=b"\x94\x04\x00\x00") / TCP(sport=777, dport=9)
    )
    assert scapy_opts[0] & 0x0F == 6
    assert PLAIN.key(scapy_opts) == mixed(777, SRC4)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(bytes(IP(src="10.0.0.9", dst="1.1.1.1") / ICMP()), id="icmp"),
        pytest.param(bytes(IPv6(src="fd00::9", dst="::1") / ICMPv6EchoRequest()), id="icmp6"),
        pytest.param(
            ipv4(SRC4, ipaddress.IPv4Address("1.1.1.1"), UDP_, l4(999, 53), frag=185),
            id="v4-later-fragment",
        ),
        pytest.param(
            ipv4(SRC4, PEER4, TCP_, l4(999, 4242), frag=0x2000 | 1),
            id="v4-later-fragment-to-peer",
        ),
        pytest.param(
            bytes(IPv6(src="fd00::9", dst="fd00::2") / IPv6ExtHdrHopByHop() / TCP(dport=4242)),
            id="v6-hop-by-hop",
        ),
        pytest.param(
            bytes(IPv6(src="fd00::9", dst="2001:db8::1") / IPv6ExtHdrFragment() / UDP()),
            id="v6-fragment-header",
        ),
        pytest.param(ipv4(SRC4, PEER4, TCP_, l4(9, 4242), ihl=4), id="v4-ihl-below-5"),
        pytest.param(bytes([0x55]) + bytes(40), id="version-5"),
        pytest.param(b"", id="empty"),
    ],
)
def test_rule5_everything_else_goes_to_0(packet: bytes) -> None:
    assert PLAIN.key(packet) == 0
    assert FAKE_IP.key(packet) == 0


def test_first_fragment_goes_where_the_rest_go() -> None:
    """Its ports would send it elsewhere, but the later fragments (no ports) go to 0:
    the worker that reassembles must get every piece."""
    packet = ipv4(SRC4, ipaddress.IPv4Address("1.1.1.1"), UDP_, l4(999, 53), frag=0x2000)
    assert PLAIN.key(packet) == 0


def test_truncated_packets_go_to_0() -> None:
    whole = [
        ipv4(SRC4, PEER4, TCP_, l4(1, 4242)),
        ipv4(SRC4, ipaddress.IPv4Address("8.8.8.8"), UDP_, l4(9000, 53), options=bytes(12)),
        ipv6(SRC6, PEER6, TCP_, l4(1, 4242)),
        ipv6(SRC6, ipaddress.IPv6Address("2001:db8::1"), UDP_, l4(9000, 53)),
    ]
    for packet in whole:
        needed = (packet[0] & 0x0F) * 4 + 4 if packet[0] >> 4 == 4 else 44
        assert PLAIN.key(packet) != 0
        assert PLAIN.key(packet[:needed]) == PLAIN.key(packet)
        for cut in range(needed):
            assert PLAIN.key(packet[:cut]) == 0, cut


def test_keys_fit_16_bits_and_arguments_are_checked() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        assert 0 <= PLAIN.key(rng.randbytes(rng.randrange(0, 80))) <= 0xFFFF
    with pytest.raises(ValueError, match="peer4"):
        steering_program(peer4=b"\x01\x02\x03", peer6=None)
    with pytest.raises(ValueError, match="peer6"):
        steering_key(b"", peer4=None, peer6=PEER4.packed)
    with pytest.raises(TypeError, match="pinned"):
        steering_program(peer4=None, peer6=None, pinned=["10.0.0.0/8"])  # type: ignore[list-item]


def test_program_is_whole_instructions() -> None:
    for cfg in (PLAIN, FAKE_IP, Config(peer4=None, peer6=None)):
        code = cfg.program()
        assert code and len(code) % steering.INSN_SIZE == 0
        assert code[-8] == 0x95  # BPF_JMP | BPF_EXIT
    assert steering.TUNSETSTEERINGEBPF == 0x800454E0


# --------------------------------------------------------------------------- in the kernel

CONFIGS = {
    "plain": PLAIN,
    "fake-ip": FAKE_IP,
    "no-peers": Config(peer4=None, peer6=None, pin_dns=True),
    "wide-pins": Config(
        pinned=(
            ipaddress.IPv4Network("0.0.0.0/1"),
            ipaddress.IPv6Network("2001:db8:0:1:8000::/65"),
            ipaddress.IPv6Network("fd00::1/128"),
        )
    ),
}


@dataclass
class Loaded:
    fds: dict[str, int] = field(default_factory=dict)

    def run(self, name: str, packet: bytes) -> int:
        return steering.test_run(self.fds[name], packet)


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    if sys.platform != "linux":
        pytest.skip("eBPF steering is Linux-only")
    if os.geteuid() != 0:
        pytest.skip("requires root (CAP_BPF + CAP_NET_ADMIN) for BPF_PROG_LOAD/TEST_RUN")
    progs = Loaded()
    try:
        for name, cfg in CONFIGS.items():
            progs.fds[name] = steering.load_program(cfg.program())
    except steering.SteeringError as exc:
        for fd in progs.fds.values():
            os.close(fd)
        if exc.errno in (errno.ENOSYS, errno.EPERM) and not exc.log:
            pytest.skip(f"bpf(2) unavailable here: {exc}")
        raise
    yield progs
    for fd in progs.fds.values():
        os.close(fd)


def edge_cases() -> list[bytes]:
    dst4, dst6 = ipaddress.IPv4Address("203.0.113.7"), ipaddress.IPv6Address("2001:db8::7")
    cases = [
        ipv4(SRC4, PEER4, TCP_, l4(1, 4242)),
        ipv4(SRC4, PEER4, UDP_, l4(1, 4242)),
        ipv4(SRC4, PEER4, TCP_, l4(1, 4242), options=bytes(40)),
        ipv4(SRC4, PEER4, TCP_, l4(1, 4242), frag=0x2000),
        ipv4(SRC4, PEER4, TCP_, l4(1, 4242), frag=8),
        ipv4(SRC4, PEER4, TCP_, l4(1, 4242), ihl=3),
        ipv4(SRC4, dst4, UDP_, l4(0xFFFF, 53)),
        ipv4(SRC4, dst4, TCP_, l4(0, 53)),
        ipv4(SRC4, dst4, ICMP_, bytes(8)),
        ipv4(SRC4, ipaddress.IPv4Address("198.19.0.1"), UDP_, l4(5, 6)),
        ipv4(SRC4, ipaddress.IPv4Address("198.20.0.1"), UDP_, l4(5, 6)),
        ipv4(ipaddress.IPv4Address("255.255.255.255"), dst4, UDP_, l4(0xFFFF, 1)),
        ipv6(SRC6, PEER6, TCP_, l4(1, 4242)),
        ipv6(SRC6, PEER6, 0, l4(1, 4242)),
        ipv6(SRC6, ipaddress.IPv6Address("fc00::1"), UDP_, l4(5, 6)),
        ipv6(SRC6, ipaddress.IPv6Address("fc00:4000::1"), UDP_, l4(5, 6)),
        ipv6(SRC6, ipaddress.IPv6Address("2001:db8:0:1:8000::9"), UDP_, l4(5, 6)),
        ipv6(SRC6, ipaddress.IPv6Address("2001:db8:0:1:7fff::9"), UDP_, l4(5, 6)),
        ipv6(SRC6, ipaddress.IPv6Address("fd00::1"), TCP_, l4(5, 6)),
        ipv6(SRC6, dst6, UDP_, l4(1234, 53)),
        ipv6(SRC6, dst6, 58, bytes(8)),
        bytes(IP(src="10.0.0.9", dst="1.1.1.1", options=b"\x94\x04\x00\x00") / UDP(sport=7)),
        bytes(IPv6(src="fd00::9", dst="fd00::2") / IPv6ExtHdrHopByHop() / TCP(dport=4242)),
        bytes([0x55]) + bytes(60),
        b"",
    ]
    for packet in list(cases):
        cases += [packet[:cut] for cut in range(0, len(packet), 3)]
    return cases


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_program_matches_model_on_edge_cases(loaded: Loaded, config: str) -> None:
    cfg = CONFIGS[config]
    for packet in edge_cases():
        assert loaded.run(config, packet) == cfg.key(packet), packet.hex()


_addr4 = st.one_of(
    st.sampled_from(
        [PEER4, SRC4, ipaddress.IPv4Address("198.19.0.0"), ipaddress.IPv4Address("127.255.1.1")]
    ),
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
)
_addr6 = st.one_of(
    st.sampled_from(
        [
            PEER6,
            SRC6,
            ipaddress.IPv6Address("fc00:3fff:ffff::"),
            ipaddress.IPv6Address("2001:db8:0:1:8000::"),
            ipaddress.IPv6Address("2001:db8:0:1:7fff:ffff:ffff:ffff"),
        ]
    ),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
)
_proto = st.sampled_from([TCP_, UDP_, ICMP_, 0, 44, 58, 132])
_port = st.one_of(st.just(53), st.integers(0, 65535))
_rest = st.binary(max_size=24)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["v4", "v6", "junk"]))
    if kind == "junk":
        return draw(st.binary(max_size=70))
    ports = l4(draw(_port), draw(_port), draw(_rest))
    if kind == "v4":
        packet = ipv4(
            draw(_addr4),
            draw(_addr4),
            draw(_proto),
            ports,
            options=bytes(4 * draw(st.integers(0, 10))),
            frag=draw(st.one_of(st.just(0), st.just(0x2000), st.integers(0, 0xFFFF))),
        )
        if draw(st.booleans()):  # a lying IHL
            packet = bytes([0x40 | draw(st.integers(0, 15))]) + packet[1:]
    else:
        packet = ipv6(draw(_addr6), draw(_addr6), draw(_proto), ports)
    if draw(st.booleans()):
        packet = packet[: draw(st.integers(0, len(packet)))]
    return packet


@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet=packets())
def test_program_matches_model_on_generated_packets(
    loaded: Loaded, config: str, packet: bytes
) -> None:
    assert loaded.run(config, packet) == CONFIGS[config].key(packet)


def test_load_failure_carries_the_verifier_log(loaded: Loaded) -> None:
    exit_only = struct.pack("<BBhi", 0x95, 0, 0, 0)  # R0 never set: the verifier says no
    with pytest.raises(steering.SteeringError) as info:
        steering.load_program(exit_only)
    assert isinstance(info.value, OSError)
    assert "R0 !read_ok" in info.value.log


@pytest.mark.parametrize("queues", [2, 3, 4])
def test_rule4_spreads_even_source_ports(queues: int) -> None:
    """Linux gives connect() even ephemeral ports; a function whose low bit is the port's
    (the bare XOR) would send every local flow to one of two workers."""
    counts = [0] * queues
    ports = range(32768, 61000, 2)
    for sport in ports:
        counts[source_hash(sport, 0x0001) % queues] += 1
    share = len(ports) / queues
    assert all(0.9 * share < c < 1.1 * share for c in counts), counts
