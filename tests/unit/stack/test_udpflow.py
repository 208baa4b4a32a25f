"""The UDP flow policy core: datagrams, routes and `now` in, events out; a fake clock, no I/O.

Outbounds are plain strings here (the core only compares them), targets are
`ztun.outbound.Target` as the engine gives them.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from ztun.outbound import Target
from ztun.stack import UdpDatagram, UdpSession
from ztun.stack.udpflow import (
    CloseAssociation,
    FlowState,
    LocalProtocolError,
    OpenAssociation,
    PumpRoute,
    SendDatagram,
    UdpFlows,
    UdpRoute,
    Unreachable,
)

APP4 = ipaddress.IPv4Address("172.19.0.1").packed
APP6 = ipaddress.IPv6Address("fdfe:dcba:9876::1").packed
DST = ipaddress.IPv4Address("10.0.0.9")
FAKE = ipaddress.IPv4Address("198.18.0.7")  # a fake-IP address standing for a domain
PROXY, DIRECT = "proxy", "direct"

Flows = UdpFlows[str, Target]


def session(port: int = 4000, *, v6: bool = False, now: float = 0.0) -> UdpSession:
    return UdpSession(6 if v6 else 4, APP6 if v6 else APP4, port, now)


def datagram(
    s: UdpSession, dst: ipaddress.IPv4Address = DST, port: int = 53, payload: bytes = b"q"
) -> UdpDatagram:
    return UdpDatagram(s, dst.packed, port, payload)


def route(
    outbound: str = PROXY, host: str = str(DST), port: int = 53, *, by_name: bool = False
) -> UdpRoute[str, Target]:
    return UdpRoute(outbound, Target(host, port), by_name=by_name)


def of(kind: type, events: list) -> list:  # type: ignore[type-arg]
    return [e for e in events if type(e) is kind]


@pytest.fixture
def counters() -> Counter[str]:
    return Counter()


@pytest.fixture
def flows(counters: Counter[str]) -> Flows:
    return UdpFlows(counters, max_opening=4, max_opening_busy=2)


def test_first_datagram_waits_for_the_association_then_goes(flows: Flows) -> None:
    s = session()
    events = flows.datagram(datagram(s, payload=b"one"), route(), 0.0)
    (open_,) = events
    assert isinstance(open_, OpenAssociation) and open_.flow.state is FlowState.OPENING
    flow = open_.flow
    assert flows.datagram(datagram(s, payload=b"two"), route(), 0.1) == []  # queued
    events = flows.opened(flow, pumpable=True)
    assert [(e.target, e.payload) for e in of(SendDatagram, events)] == [
        (Target(str(DST), 53), b"one"),
        (Target(str(DST), 53), b"two"),
    ]
    # The destination is routed for good: the pump may carry its next datagrams.
    (pump,) = of(PumpRoute, events)
    assert (pump.dst_addr, pump.dst_port, pump.target) == (DST.packed, 53, Target(str(DST), 53))
    # Now it is open: datagrams go at once, and the route is not offered twice.
    assert flows.datagram(datagram(s, payload=b"three"), route(), 0.2) == [
        SendDatagram(flow, Target(str(DST), 53), b"three")
    ]


def test_the_queue_is_bounded(counters: Counter[str]) -> None:
    flows: Flows = UdpFlows(counters, queue_limit=3)
    s = session()
    for i in range(5):
        flows.datagram(datagram(s, payload=bytes([i])), route(), 0.0)
    assert counters["udp_queue_overflow"] == 2
    (flow,) = flows
    assert [e.payload for e in of(SendDatagram, flows.opened(flow, pumpable=False))] == [
        b"\x00",
        b"\x01",
        b"\x02",
    ]


def test_one_flow_per_session_and_outbound(flows: Flows) -> None:
    s = session()
    flows.datagram(datagram(s), route(PROXY), 0.0)
    flows.datagram(datagram(s, port=123), route(DIRECT, port=123), 0.0)
    flows.datagram(datagram(session(4001)), route(PROXY), 0.0)
    assert sorted((f.session.client_port, f.outbound) for f in flows) == [
        (4000, DIRECT),
        (4000, PROXY),
        (4001, PROXY),
    ]


def test_set_ups_are_bounded_and_run_in_order(flows: Flows, counters: Counter[str]) -> None:
    """At most max_opening at once; the rest wait, first come first served."""
    opened = []
    for port in range(10):
        opened += of(OpenAssociation, flows.datagram(datagram(session(port)), route(), 0.0))
    assert [e.flow.session.client_port for e in opened] == [0, 1, 2, 3]
    assert (flows.opening, flows.waiting) == (4, 6)
    assert counters["udp_open_queued"] == 8  # every flow after the busy bound's two
    first = opened[0].flow
    (next_open,) = of(OpenAssociation, flows.opened(first, pumpable=False))
    assert next_open.flow.session.client_port == 4
    # A failure frees its slot too.
    (after_failure,) = of(OpenAssociation, flows.open_failed(opened[1].flow, rejected=False))
    assert after_failure.flow.session.client_port == 5
    assert counters["udp_open_failed"] == 1


def test_a_backlogged_tun_lowers_the_bound_until_it_is_drained(flows: Flows) -> None:
    assert flows.tun_backlogged(True) == []
    opened = []
    for port in range(6):
        opened += of(OpenAssociation, flows.datagram(datagram(session(port)), route(), 0.0))
    assert len(opened) == 2 and flows.waiting == 4
    more = of(OpenAssociation, flows.tun_backlogged(False))
    assert [e.flow.session.client_port for e in more] == [2, 3]
    assert flows.tun_backlogged(False) == []  # no change, no events


def test_rejected_set_up_answers_every_queued_datagram(flows: Flows) -> None:
    s = session()
    first, second = datagram(s, payload=b"a"), datagram(s, payload=b"b")
    (open_,) = flows.datagram(first, route(), 0.0)
    flows.datagram(second, route(), 0.0)
    events = flows.open_failed(open_.flow, rejected=True)
    assert of(Unreachable, events) == [Unreachable(first), Unreachable(second)]
    assert len(flows) == 0


def test_failed_set_up_drops_and_a_later_datagram_tries_again(
    flows: Flows, counters: Counter[str]
) -> None:
    s = session()
    (open_,) = flows.datagram(datagram(s), route(), 0.0)
    assert of(Unreachable, flows.open_failed(open_.flow, rejected=False)) == []
    assert counters["udp_open_failed"] == 1 and len(flows) == 0
    assert of(OpenAssociation, flows.datagram(datagram(s), route(), 1.0))


def test_reply_from_a_fake_ip_domain_comes_from_the_fake_address(flows: Flows) -> None:
    """The app sent to 198.18.0.7 (fake-IP for a name); the proxy resolved the name and
    the reply comes from the real address: the app must see the fake one."""
    s = session()
    (open_,) = flows.datagram(
        datagram(s, FAKE, 443), route(host="example.test", port=443, by_name=True), 0.0
    )
    flow = open_.flow
    events = flows.opened(flow, pumpable=True)
    assert of(PumpRoute, events) == []  # a name's route is never handed to the pump
    assert flows.reply_source(flow, "93.184.216.34", 443) == FAKE.packed


def test_reply_from_an_address_the_app_used_keeps_it(flows: Flows) -> None:
    """A real destination sharing the fake one's port: its replies keep their address."""
    s = session()
    (open_,) = flows.datagram(
        datagram(s, FAKE, 443), route(host="example.test", port=443, by_name=True), 0.0
    )
    flows.datagram(datagram(s, DST, 443), route(port=443), 0.0)
    assert flows.reply_source(open_.flow, str(DST), 443) == DST.packed
    assert (
        flows.reply_source(open_.flow, "10.9.9.9", 444) == ipaddress.IPv4Address("10.9.9.9").packed
    )


@pytest.mark.parametrize(
    ("v6", "host", "expected"),
    [
        (False, "::ffff:10.1.2.3", ipaddress.IPv4Address("10.1.2.3").packed),
        (True, "10.1.2.3", ipaddress.IPv6Address("::ffff:10.1.2.3").packed),
        (True, "2001:db8::1", ipaddress.IPv6Address("2001:db8::1").packed),
        (False, "2001:db8::1", None),  # nothing an IPv4 app could be shown
        (False, "name.test", None),  # a proxy must answer with an address
    ],
)
def test_reply_family_mapping(
    flows: Flows, counters: Counter[str], v6: bool, host: str, expected: bytes | None
) -> None:
    (open_,) = flows.datagram(datagram(session(v6=v6)), route(), 0.0)
    assert flows.reply_source(open_.flow, host, 53) == expected
    if expected is None:
        assert counters["udp_reply_family_mismatch"] + counters["udp_reply_from_domain"] == 1


def test_session_expiry_closes_its_flows_and_takes_back_pump_routes(flows: Flows) -> None:
    s = session()
    (open_,) = flows.datagram(datagram(s), route(PROXY), 0.0)
    flows.opened(open_.flow, pumpable=True)
    (direct_open,) = flows.datagram(datagram(s, port=5), route(DIRECT, port=5), 0.0)
    events = flows.session_expired(s)
    closes = of(CloseAssociation, events)
    assert {c.flow.outbound for c in closes} == {PROXY, DIRECT}
    proxy_close = next(c for c in closes if c.flow.outbound == PROXY)
    assert proxy_close.pump_routes == ((DST.packed, 53),)
    assert len(flows) == 0 and direct_open.flow.state is FlowState.CLOSED


def test_closed_by_the_proxy_then_reopened(flows: Flows) -> None:
    s = session()
    (open_,) = flows.datagram(datagram(s), route(), 0.0)
    flows.opened(open_.flow, pumpable=False)
    assert of(CloseAssociation, flows.closed(open_.flow))
    assert flows.closed(open_.flow) == []  # the engine's own close comes back: no-op
    (again,) = of(OpenAssociation, flows.datagram(datagram(s), route(), 1.0))
    assert again.flow is not open_.flow


def test_association_that_comes_up_after_its_flow_closed_is_closed(flows: Flows) -> None:
    s = session()
    (open_,) = flows.datagram(datagram(s), route(), 0.0)
    flows.session_expired(s)
    assert flows.opened(open_.flow, pumpable=True) == [CloseAssociation(open_.flow, ())]


def test_lru_eviction_keeps_flows_bounded(counters: Counter[str]) -> None:
    """--max-udp-sessions: one more flow closes the least recently used one."""
    flows: Flows = UdpFlows(counters, max_flows=3)
    sessions = [session(port, now=float(port)) for port in range(3)]
    for s in sessions:
        (open_,) = flows.datagram(datagram(s), route(), s.last_seen)
        flows.opened(open_.flow, pumpable=False)
    # Session 0 speaks again (through the loop): session 1 is now the oldest.
    flows.datagram(datagram(sessions[0]), route(), 5.0)
    sessions[0].last_seen = 5.0
    events = flows.datagram(datagram(session(9, now=6.0)), route(), 6.0)
    (evicted,) = of(CloseAssociation, events)
    assert evicted.flow.session is sessions[1]
    assert counters["udp_sessions_evicted"] == 1 and len(flows) == 3


def test_lru_counts_traffic_the_pump_carried(counters: Counter[str]) -> None:
    """Datagrams the pump sent itself never reach the core, but they touch the session."""
    flows: Flows = UdpFlows(counters, max_flows=2)
    a, b = session(1, now=1.0), session(2, now=2.0)
    for s in (a, b):
        (open_,) = flows.datagram(datagram(s), route(), s.last_seen)
        flows.opened(open_.flow, pumpable=True)
    a.last_seen = 10.0  # the stack saw more of session a, through the pump
    (evicted,) = of(CloseAssociation, flows.datagram(datagram(session(3)), route(), 11.0))
    assert evicted.flow.session is b


def test_evicting_a_waiting_flow_opens_nothing(counters: Counter[str]) -> None:
    flows: Flows = UdpFlows(counters, max_opening=1, max_opening_busy=1, max_flows=2)
    first = flows.datagram(datagram(session(1)), route(), 0.0)
    flows.datagram(datagram(session(2)), route(), 0.0)  # waits
    assert flows.waiting == 1
    events = flows.datagram(datagram(session(3)), route(), 0.0)
    # The oldest (opening) flow is closed; its slot goes to the waiting one.
    assert [type(e) for e in events] == [CloseAssociation, OpenAssociation]
    assert events[0].flow is first[0].flow  # type: ignore[union-attr]
    assert counters["udp_queue_dropped"] == 1  # session 1's datagram never went


def test_decisions_are_remembered_unless_by_name(flows: Flows) -> None:
    flows.remember(DST.packed, 53, route())
    flows.remember(FAKE.packed, 443, route(host="example.test", port=443, by_name=True))
    assert flows.decided(DST.packed, 53) == route()
    assert flows.decided(FAKE.packed, 443) is None


def test_an_impossible_report_is_a_local_protocol_error(flows: Flows) -> None:
    (open_,) = flows.datagram(datagram(session()), route(), 0.0)
    flows.opened(open_.flow, pumpable=False)
    with pytest.raises(LocalProtocolError, match="open -> open"):
        flows.opened(open_.flow, pumpable=False)
