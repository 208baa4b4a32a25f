"""The kernel NAT's model: derived from the stack's NAT, and rewriting as the stack does.

No root needed: the model is held to `SystemStack.receive` here, and the program to the
model in test_program.py -- so the program rewrites as the stack does.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernelnat_cases import (
    APP4,
    APP6,
    DST4,
    DST6,
    FLOWS,
    Held,
    egress_packets,
    flow_packets,
    held_flows,
    ipv4_with_options,
    ipv6_with_extension,
    pure_syn,
    scapy_tcp4,
    set_partial_checksum,
)
from scapy.layers.inet import IP, UDP

from ztun.kernelnat import model
from ztun.kernelnat.layout import TC_ACT_OK, TC_ACT_REDIRECT, native_diff
from ztun.kernelnat.model import FlowEntry, entries_for, flow_key
from ztun.wire import ACK, FIN, PSH, RST, SYN, build_tcp, parse_ip
from ztun.wire.checksum import checksum_delta, ones_sum, pseudo_header_sum


def _stack_output(held: Held, packet: bytes, partial: bool = False) -> bytes | None:
    out = held.stack.receive(memoryview(bytearray(packet)), 1.0, partial)
    return None if out is None else bytes(out)  # type: ignore[arg-type]


def _checksums_verify(packet: bytes) -> bool:
    header = 20 if packet[0] >> 4 == 4 else 40
    ip = parse_ip(memoryview(bytearray(packet)))
    l4 = packet[header:]
    pseudo = pseudo_header_sum(bytes(ip.src), bytes(ip.dst), 6, len(l4))
    header_ok = header == 40 or ones_sum(packet[:header]) == 0xFFFF
    return header_ok and ones_sum(l4, pseudo) == 0xFFFF


# --------------------------------------------------------------------------- derivation


def test_entries_are_the_stacks_rewrite_and_its_deltas() -> None:
    held = held_flows()
    for session in held.sessions:
        nat = held.nat(session.version)
        (app_key, out), (answer_key, back) = entries_for(session, nat)
        assert app_key == flow_key(
            session.client_addr, session.dst_addr, session.client_port, session.dst_port
        )
        assert out.rewrite == flow_key(
            nat.peer_addr, nat.server_addr, session.nat_port, nat.listen_port
        )
        assert answer_key == flow_key(
            nat.server_addr, nat.peer_addr, nat.listen_port, session.nat_port
        )
        assert back.rewrite == flow_key(
            session.dst_addr, session.client_addr, session.dst_port, session.client_port
        )
        # The address differences are the stack's own per-flow deltas...
        assert out.addr_diff == native_diff(session.ip_delta_out)
        assert back.addr_diff == native_diff(session.ip_delta_in)
        # ...and addresses plus ports add up to its transport delta (mod 2^16 - 1).
        swap = native_diff  # the byte swap is its own inverse
        assert (swap(out.addr_diff) + swap(out.port_diff)) % 0xFFFF == session.l4_delta_out
        assert (swap(back.addr_diff) + swap(back.port_diff)) % 0xFFFF == session.l4_delta_in


def test_entry_between_checks_its_keys() -> None:
    key4 = flow_key(APP4[0].packed, DST4[0].packed, 1, 2)
    with pytest.raises(ValueError, match="12 or 36"):
        FlowEntry.between(key4, key4 + b"x")
    with pytest.raises(ValueError, match="12 or 36"):
        FlowEntry.between(key4[:8], key4[:8])
    entry = FlowEntry.between(key4, key4)
    assert (entry.addr_diff, entry.port_diff) == (0, 0)
    delta = checksum_delta(key4[:8], DST4[0].packed + APP4[0].packed)
    assert FlowEntry.between(key4, DST4[0].packed + APP4[0].packed + key4[8:]).addr_diff == (
        native_diff(delta)
    )


# --------------------------------------------------------------------------- the rewrite


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_model_rewrites_what_the_stack_rewrites(data: st.DataObject) -> None:
    """A whole, right segment of a held flow, either direction, any flags but a bare
    SYN: the model redirects it, rewritten to the byte as the stack rewrites it; a near
    miss of a held key, or a bare SYN, it leaves to the stack."""
    held = held_flows()
    packet = data.draw(flow_packets(held))
    partial = data.draw(st.booleans())
    if partial:
        packet = set_partial_checksum(packet)
    verdict = model.run(packet, held.flows(), csum_partial=partial)
    key = bytes(packet[12:24] if packet[0] >> 4 == 4 else packet[8:44])
    if key not in held.flows() or pure_syn(packet):
        assert verdict.action == TC_ACT_OK and verdict.packet == packet
        return
    assert verdict.action == TC_ACT_REDIRECT
    assert verdict.packet == _stack_output(held, packet, partial)
    if not partial:
        assert _checksums_verify(verdict.packet)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_what_the_model_leaves_is_untouched(data: st.DataObject) -> None:
    held = held_flows()
    packet = data.draw(egress_packets(held))
    verdict = model.run(packet, held.flows())
    if verdict.action == TC_ACT_OK:
        assert verdict.packet == packet and verdict.key is None
    else:
        assert verdict.action == TC_ACT_REDIRECT
        assert verdict.key in held.flows()
        assert len(verdict.packet) == len(packet)
        at = 12 if packet[0] == 0x45 else 8
        assert verdict.packet[at : at + len(verdict.key)] == held.flows()[verdict.key].rewrite


def _held_segment(version: int, flags: int, payload: bytes = b"data") -> bytes:
    apps, dsts = (APP4, DST4) if version == 4 else (APP6, DST6)
    app, sport, dst, dport = FLOWS[0]
    return bytes(
        build_tcp(apps[app], dsts[dst], sport, dport, seq=9, ack=4, flags=flags, payload=payload)
    )


def _with(packet: bytes, offset: int, value: bytes) -> bytes:
    return packet[:offset] + value + packet[offset + len(value) :]


CASES_LEFT_TO_THE_STACK = {
    "syn4": _held_segment(4, SYN, b""),
    "syn6": _held_segment(6, SYN, b""),
    "syn-fin4": _held_segment(4, SYN | FIN),
    "ipv4-options": ipv4_with_options(_held_segment(4, ACK)),
    "ipv6-hop-by-hop": ipv6_with_extension(_held_segment(6, ACK), True),
    "ipv6-destination-options": ipv6_with_extension(_held_segment(6, ACK), False),
    "ipv4-more-fragments": _with(_held_segment(4, ACK), 6, b"\x20\x00"),
    "ipv4-fragment-offset": _with(_held_segment(4, ACK), 6, b"\x00\x08"),
    "ipv4-total-length-short": _with(_held_segment(4, ACK), 2, b"\x00\x28"),
    "ipv6-payload-length-long": _with(_held_segment(6, ACK), 4, b"\x05\x00"),
    "data-offset-4": _with(_held_segment(4, ACK), 32, b"\x40"),
    "data-offset-past-the-end": _with(_held_segment(6, ACK, b""), 52, b"\x60"),
    "udp-on-held-ports": bytes(
        IP(src=str(APP4[0]), dst=str(DST4[0])) / UDP(sport=FLOWS[0][1], dport=FLOWS[0][3])
    ),
    "unknown-flow": scapy_tcp4("10.9.9.9", "1.1.1.1", 1000, 80),
    "version-5": bytes([0x55]) + _held_segment(4, ACK)[1:],
    "truncated-header": _held_segment(4, ACK)[:39],
    "truncated-v6": _held_segment(6, ACK)[:59],
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(CASES_LEFT_TO_THE_STACK))
def test_left_to_the_stack(name: str) -> None:
    packet = CASES_LEFT_TO_THE_STACK[name]
    verdict = model.run(packet, held_flows().flows())
    assert (verdict.action, verdict.packet, verdict.key) == (TC_ACT_OK, packet, None)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("flags", [ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK], ids=str)
def test_taken_flags_and_counted_payload(version: int, flags: int) -> None:
    """RST, FIN, SYN-ACK (the listener's answer to a SYN ztun installed) go through the
    kernel like data; the counter takes the TCP payload, options not included."""
    packet = _held_segment(version, flags, b"x" * 77)
    verdict = model.run(packet, held_flows().flows())
    assert verdict.action == TC_ACT_REDIRECT
    assert verdict.payload == 77
    assert verdict.key == bytes(packet[12:24] if version == 4 else packet[8:44])


def test_a_zero_transport_checksum_stays_right() -> None:
    """The RFC 1624 corner: a rewrite whose result sums to -0 must store 0x0000 (as a
    full recomputation would), like the stack's apply_delta."""
    held = held_flows()
    for version in (4, 6):
        csum_at = (20 if version == 4 else 40) + 16
        # Adding the word w to the data takes w off the checksum: with w equal to the
        # rewritten checksum of an all-zero payload, the rewritten sum is exactly -0.
        zero = model.run(_held_segment(version, ACK, bytes(2)), held.flows()).packet
        packet = _held_segment(version, ACK, zero[csum_at : csum_at + 2])
        verdict = model.run(packet, held.flows())
        assert verdict.packet[csum_at : csum_at + 2] == b"\x00\x00"
        assert verdict.packet == _stack_output(held, packet)
        assert _checksums_verify(verdict.packet)


def test_ipv6_addresses_outside_the_tun_prefix() -> None:
    """A forwarded app (not the TUN's own address) in another prefix: same rewrite."""
    held = held_flows()
    app = ipaddress.IPv6Address("2001:db8:1::2")
    assert app == APP6[1]
    packet = bytes(build_tcp(app, DST6[1], 51234, 80, seq=1, ack=1, flags=ACK, payload=b"hi"))
    verdict = model.run(packet, held.flows())
    assert verdict.action == TC_ACT_REDIRECT
    assert verdict.packet == _stack_output(held, packet)
