"""The stack's NAT hook (docs/contracts.md section 6): an observer hears of every TCP NAT
entry when it is made -- before the SYN that made it is handed back -- and when it goes."""

from __future__ import annotations

import ipaddress

from ztun.stack import SystemStack, TcpSession
from ztun.wire import ACK, SYN, build_tcp

INET4 = ipaddress.IPv4Interface("198.18.0.1/30")
INET6 = ipaddress.IPv6Interface("fd00:5a:7e::1/126")
APP, DST = ipaddress.IPv4Address("10.1.1.2"), ipaddress.IPv4Address("192.0.2.80")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, TcpSession]] = []

    def installed(self, session: TcpSession) -> None:
        self.calls.append(("installed", session))

    def removed(self, session: TcpSession) -> None:
        self.calls.append(("removed", session))


def _stack() -> tuple[SystemStack, Recorder]:
    recorder = Recorder()
    stack = SystemStack(
        inet4=INET4,
        inet6=INET6,
        listen_port4=7001,
        listen_port6=7002,
        tcp_pending_timeout=30.0,
        tcp_closing_linger=10.0,
        nat_observer=recorder,
    )
    return stack, recorder


def _send(stack: SystemStack, flags: int, now: float, sport: int = 40000) -> object:
    packet = build_tcp(APP, DST, sport, 443, seq=1, flags=flags)
    return stack.receive(memoryview(packet), now)


def test_installed_once_per_new_entry_before_the_syn_returns() -> None:
    stack, recorder = _stack()
    out = _send(stack, SYN, 0.0)
    assert out is not None  # the rewritten SYN
    nat = stack.nat4
    assert nat is not None
    (session,) = list(nat)
    assert recorder.calls == [("installed", session)]
    _send(stack, SYN, 0.5)  # a retransmitted SYN: the same entry
    _send(stack, ACK, 0.6)
    _send(stack, SYN, 0.7, sport=40001)  # another flow
    assert [c for c, _ in recorder.calls] == ["installed", "installed"]
    assert recorder.calls[1][1].client_port == 40001


def test_removed_when_a_pending_entry_expires() -> None:
    stack, recorder = _stack()
    _send(stack, SYN, 0.0)
    session = recorder.calls[0][1]
    assert stack.on_timer(29.0) == []
    events = stack.on_timer(30.0)
    assert [e.session for e in events] == [session]  # type: ignore[union-attr]
    assert recorder.calls == [("installed", session), ("removed", session)]


def test_a_lingering_entry_and_its_successor() -> None:
    """The app reuses its port while the closed flow lingers: the new entry is
    installed (same app-side key), the old one removed when its linger ends."""
    stack, recorder = _stack()
    nat = stack.nat4
    assert nat is not None
    _send(stack, SYN, 0.0)
    old = recorder.calls[0][1]
    assert stack.tcp_accepted(4, nat.peer_addr, old.nat_port) is old
    stack.tcp_closed(old, 1.0)
    _send(stack, SYN, 2.0)
    new = recorder.calls[1][1]
    assert recorder.calls == [("installed", old), ("installed", new)]
    assert new is not old and new.nat_port != old.nat_port
    stack.on_timer(11.0)  # the old linger ends; the new one is pending until 32
    assert recorder.calls[2:] == [("removed", old)]
    assert nat.by_flow((APP.packed, 40000, DST.packed, 443)) is new


def test_no_observer_no_calls() -> None:
    stack = SystemStack(inet4=INET4, inet6=None, listen_port4=7001)
    assert stack.nat_observer is None
    assert _send(stack, SYN, 0.0) is not None
    assert stack.on_timer(100.0) != []
