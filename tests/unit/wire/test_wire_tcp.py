"""TcpPacket / TcpRepr / options against captured Linux segments and hypothesis."""

from __future__ import annotations

import pytest
import wire_vectors as V
from hypothesis import given
from wire_helpers import addr_pairs, poisoned, tcp_options, tcp_reprs

from ztun.wire import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Malformed,
    TcpOptions,
    TcpPacket,
    TcpRepr,
    Truncated,
    checksum_delta,
    emit_options,
    parse_ip,
    parse_options,
)

TCP_VECTORS = ["IPV4_TCP_SYN", "IPV4_TCP_SYNACK", "IPV4_TCP_DATA", "IPV6_TCP_SYN", "IPV6_TCP_DATA"]


def segment(name: str) -> tuple[TcpPacket, bytes, bytes]:
    """The captured segment as a view over a private copy, plus its IP addresses."""
    ip = parse_ip(bytearray(getattr(V, name)))
    offset = len(ip.buf) - len(ip.payload)
    return TcpPacket.checked(ip.buf[offset:]), ip.src, ip.dst


def test_syn_fields() -> None:
    tcp, src, dst = segment("IPV4_TCP_SYN")
    assert (tcp.dst_port, tcp.ack, tcp.header_len, tcp.urgent) == (8080, 0, 40, 0)
    assert tcp.flags == SYN and tcp.syn
    assert not (tcp.fin or tcp.rst or tcp.psh or tcp.ack_flag or tcp.urg or tcp.ece or tcp.cwr)
    assert tcp.window == 64240
    assert len(tcp.payload) == 0
    assert tcp.verify_checksum(src, dst)
    opts = parse_options(tcp.options)
    assert opts.mss == 1460 and opts.window_scale == 10 and opts.sack_permitted
    assert opts.timestamps is not None and opts.timestamps[1] == 0
    assert opts.sack_blocks == ()


def test_data_segment_fields() -> None:
    tcp, src, dst = segment("IPV6_TCP_DATA")
    assert tcp.flags == PSH | ACK and tcp.psh and tcp.ack_flag
    assert bytes(tcp.payload).startswith(b"GET / HTTP/1.0")
    assert tcp.verify_checksum(src, dst)
    syn, _, _ = segment("IPV6_TCP_SYN")
    assert tcp.seq == (syn.seq + 1) & 0xFFFFFFFF  # the first data byte follows the SYN


@pytest.mark.parametrize("name", TCP_VECTORS)
def test_options_reemit_in_linux_layout(name: str) -> None:
    tcp, _, _ = segment(name)
    assert emit_options(parse_options(tcp.options)) == bytes(tcp.options)


@pytest.mark.parametrize("name", TCP_VECTORS)
def test_emit_into_poison_matches_capture(name: str) -> None:
    tcp, src, dst = segment(name)
    repr_ = TcpRepr.parse(tcp, src, dst)
    buf = poisoned(len(tcp.buf))
    repr_.emit(buf, src, dst, tcp.payload)
    assert bytes(buf) == bytes(tcp.buf)
    assert repr_.header_len == tcp.header_len


def test_parse_with_addresses_verifies_checksum() -> None:
    tcp, src, dst = segment("IPV4_TCP_SYN")
    tcp.checksum ^= 0x0100
    with pytest.raises(Malformed) as info:
        TcpRepr.parse(tcp, src, dst)
    assert info.value.reason == "bad_checksum"
    assert TcpRepr.parse(tcp).dst_port == 8080  # offload: no addresses, no verification
    tcp.fill_checksum(src, dst)
    assert tcp.verify_checksum(src, dst)


def test_nat_rewrite_with_precomputed_delta() -> None:
    """The per-flow delta of (address + port) fixes the checksum without a recompute."""
    tcp, src, dst = segment("IPV4_TCP_DATA")
    new_src, new_port = bytes([172, 19, 0, 2]), 40000
    delta = checksum_delta(
        src + tcp.src_port.to_bytes(2, "big"), new_src + new_port.to_bytes(2, "big")
    )
    tcp.src_port = new_port
    tcp.adjust_checksum(delta)
    assert tcp.verify_checksum(new_src, dst)


def test_flag_constants() -> None:
    assert [1 << i for i in range(8)] == [FIN, SYN, RST, PSH, ACK, URG, ECE, CWR]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", TcpOptions()),
        (b"\x01\x01\x01\x01", TcpOptions()),
        (b"\x00\x02\x04\x05\xb4", TcpOptions()),  # EOL: the rest is ignored
        (b"\x02\x04\x05\xb4\x00\x00\x00\x00", TcpOptions(mss=1460)),
        (b"\x1e\x06\x00\x00\x00\x00\x03\x03\x07", TcpOptions(window_scale=7)),  # MPTCP skipped
        (b"\xfe\x02\x04\x02", TcpOptions(sack_permitted=True)),  # experimental, empty body
        (
            b"\x01\x01\x05\x12"
            + (1).to_bytes(4, "big")
            + (2).to_bytes(4, "big")
            + (5).to_bytes(4, "big")
            + (9).to_bytes(4, "big"),
            TcpOptions(sack_blocks=((1, 2), (5, 9))),
        ),
        (b"\x02\x04\x00\x01\x02\x04\x05\xb4", TcpOptions(mss=1460)),  # last one wins
    ],
    ids=["empty", "nops", "eol", "mss", "unknown", "unknown-empty", "sack", "repeat"],
)
def test_parse_options(data: bytes, expected: TcpOptions) -> None:
    assert parse_options(data) == expected
    assert parse_options(memoryview(data)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x02",  # no length byte
        b"\x1e\x00",  # length 0 would loop forever
        b"\x1e\x01\x00\x00",  # length 1 is impossible
        b"\x02\x05\x05\xb4\x00",  # MSS with length 5
        b"\x02\x04\x05",  # runs past the end
        b"\x03\x04\x07\x00",  # window scale with length 4
        b"\x04\x03\x00",  # SACK-permitted with length 3
        b"\x05\x02",  # SACK without blocks
        b"\x05\x0b" + bytes(9),  # SACK not a multiple of 8
        b"\x05\x2a" + bytes(40),  # five SACK blocks
        b"\x08\x08" + bytes(6),  # timestamps with length 8
    ],
)
def test_bad_option_lengths(data: bytes) -> None:
    with pytest.raises(Malformed) as info:
        parse_options(data)
    assert info.value.reason == "bad_option"


def test_emit_options_layouts() -> None:
    assert emit_options(TcpOptions()) == b""
    assert emit_options(TcpOptions(sack_permitted=True)) == b"\x01\x01\x04\x02"
    assert emit_options(TcpOptions(timestamps=(1, 2))) == b"\x01\x01\x08\x0a" + bytes.fromhex(
        "0000000100000002"
    )
    assert emit_options(TcpOptions(window_scale=14)) == b"\x01\x03\x03\x0e"


def test_emit_options_refuses_overflow() -> None:
    too_much = TcpOptions(mss=1, window_scale=1, timestamps=(1, 1), sack_blocks=((1, 2),) * 3)
    with pytest.raises(ValueError, match="at most 40"):
        emit_options(too_much)


def test_options_refuse_out_of_range() -> None:
    with pytest.raises(ValueError, match="mss"):
        TcpOptions(mss=70000)
    with pytest.raises(ValueError, match="SACK"):
        TcpOptions(sack_blocks=((1, 2),) * 5)


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (bytes(19), Truncated, "truncated"),
        (bytes(12) + b"\x40" + bytes(7), Malformed, "bad_data_offset"),
        (bytes(12) + b"\x60" + bytes(7), Truncated, "truncated"),
    ],
    ids=["short", "offset<5", "offset-past-end"],
)
def test_checked_refuses(data: bytes, error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as info:
        TcpPacket.checked(data)
    assert getattr(info.value, "reason", None) == reason


def test_emit_refuses_wrong_payload_length() -> None:
    repr_ = TcpRepr(1, 2, 0, 0, ACK, 100, payload_len=3)
    with pytest.raises(ValueError, match="payload"):
        repr_.emit(bytearray(40), bytes(4), bytes(4), b"ab")


@given(tcp_options)
def test_options_round_trip(opts: TcpOptions) -> None:
    data = emit_options(opts)
    assert len(data) % 4 == 0 and len(data) <= 40
    assert parse_options(data) == opts


@given(tcp_reprs, addr_pairs)
def test_repr_round_trip(repr_: TcpRepr, addrs: tuple[bytes, bytes]) -> None:
    src, dst = addrs
    payload = bytes(range(repr_.payload_len % 256)) * (repr_.payload_len // 256 + 1)
    payload = payload[: repr_.payload_len]
    buf = poisoned(repr_.header_len + repr_.payload_len)
    repr_.emit(buf, src, dst, payload)
    pkt = TcpPacket.checked(buf)
    assert TcpRepr.parse(pkt, src, dst) == repr_
    assert bytes(pkt.payload) == payload
