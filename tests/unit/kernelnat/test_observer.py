"""KernelNat as the stack's NAT observer, against real maps (no program attached): what
the stack holds is what the maps hold, entry for entry, through opens, port reuse and
expiry. Root only (BPF_MAP_CREATE)."""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterator

import pytest
from kernelnat_cases import INET4, INET6, LISTEN4, LISTEN6

from ztun.ebpf import BpfError, syscall
from ztun.kernelnat import Counters, FlowMaps, KernelNat
from ztun.kernelnat.layout import VALUE4
from ztun.kernelnat.model import entries_for
from ztun.stack import SystemStack
from ztun.wire import SYN, build_tcp

DST4 = ipaddress.IPv4Address("192.0.2.80")
DST6 = ipaddress.IPv6Address("2001:db8::80")


@pytest.fixture
def maps() -> Iterator[FlowMaps]:
    if os.geteuid() != 0:
        pytest.skip("requires root (CAP_BPF) for BPF_MAP_CREATE")
    try:
        maps = FlowMaps(max_entries=64)
    except BpfError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            pytest.skip(f"bpf(2) unavailable here: {exc}")
        raise
    yield maps
    maps.close()


def _stack() -> SystemStack:
    return SystemStack(
        inet4=INET4,
        inet6=INET6,
        listen_port4=LISTEN4,
        listen_port6=LISTEN6,
        tcp_closing_linger=10.0,
    )


def _syn(
    stack: SystemStack,
    sport: int,
    now: float,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address = DST4,
) -> None:
    src = INET4.ip if dst.version == 4 else INET6.ip
    assert stack.receive(memoryview(build_tcp(src, dst, sport, 443, flags=SYN)), now) is not None


def _mirrored(stack: SystemStack, maps: FlowMaps) -> int:
    """Check that the maps hold each session's entries; how many keys that is."""
    keys = 0
    for nat in (stack.nat4, stack.nat6):
        assert nat is not None
        for session in nat:
            for key, entry in entries_for(session, nat):
                assert maps.entry(key) == entry, session
                keys += 1
    return keys


def test_follow_mirrors_what_the_stack_holds_already(maps: FlowMaps) -> None:
    stack = _stack()
    _syn(stack, 40000, 0.0)
    _syn(stack, 40001, 0.0, dst=DST6)
    kernel_nat = KernelNat(maps)
    kernel_nat.follow(stack)
    assert stack.nat_observer is kernel_nat
    assert _mirrored(stack, maps) == 4
    _syn(stack, 40002, 1.0)
    assert _mirrored(stack, maps) == 6
    assert kernel_nat.snapshot()["entries"] == 6


def test_port_reuse_and_expiry_keep_the_maps_in_step(maps: FlowMaps) -> None:
    stack = _stack()
    kernel_nat = KernelNat(maps)
    kernel_nat.follow(stack)
    nat = stack.nat4
    assert nat is not None
    _syn(stack, 40000, 0.0)
    (old,) = list(nat)
    stack.tcp_accepted(4, nat.peer_addr, old.nat_port)
    stack.tcp_closed(old, 1.0)  # lingers until 11
    _syn(stack, 40000, 2.0)  # the app reuses its port: a new session, the same app key
    new = nat.by_flow((old.client_addr, 40000, DST4.packed, 443))
    assert new is not None and new is not old
    (old_app, _), (old_answer, _) = entries_for(old, nat)
    (new_app, new_out), (new_answer, _) = entries_for(new, nat)
    assert old_app == new_app and maps.entry(new_app) == new_out
    assert maps.entry(old_answer) is not None  # the listener's late answers still map
    stack.on_timer(11.0)  # the old entry goes; the new flow's must stay
    assert maps.entry(old_answer) is None
    assert maps.entry(new_app) == new_out and maps.entry(new_answer) is not None
    stack.on_timer(100.0)  # the new one was never accepted: pending timeout
    assert maps.entry(new_app) is None and maps.entry(new_answer) is None
    assert kernel_nat.snapshot()["entries"] == 0


def test_follow_gives_a_shared_app_key_to_the_flows_current_session(maps: FlowMaps) -> None:
    """Attached while a closed flow lingers beside its successor (same app port): the
    app's key must rewrite onto the successor's NAT port, the old answers still map."""
    stack = _stack()
    nat = stack.nat4
    assert nat is not None
    _syn(stack, 40000, 0.0)
    (old,) = list(nat)
    stack.tcp_accepted(4, nat.peer_addr, old.nat_port)
    stack.tcp_closed(old, 1.0)
    _syn(stack, 40000, 2.0)
    new = nat.by_flow((old.client_addr, 40000, DST4.packed, 443))
    assert new is not None and new is not old
    # Whatever order the table iterates in must not matter: put the old session last,
    # the order in which a naive mirror would hand the app's key back to it.
    nat._by_port = dict(reversed(list(nat._by_port.items())))
    assert list(nat)[-1] is old
    KernelNat(maps).follow(stack)
    (app_key, new_out), (new_answer, new_back) = entries_for(new, nat)
    (_, _), (old_answer, old_back) = entries_for(old, nat)
    assert maps.entry(app_key) == new_out
    assert maps.entry(new_answer) == new_back and maps.entry(old_answer) == old_back


def test_removal_reads_what_the_kernel_carried(maps: FlowMaps) -> None:
    """The counters an entry holds when it goes are added to the totals (here written
    by hand where the program would count)."""
    stack = _stack()
    kernel_nat = KernelNat(maps)
    kernel_nat.follow(stack)
    _syn(stack, 40000, 0.0)
    nat = stack.nat4
    assert nat is not None
    (session,) = list(nat)
    (app_key, out), (answer_key, back) = entries_for(session, nat)
    syscall.map_update(maps.fd4, app_key, VALUE4.struct.pack(out.rewrite, 0, 0, 3, 3000))
    syscall.map_update(maps.fd4, answer_key, VALUE4.struct.pack(back.rewrite, 0, 0, 5, 70))
    assert kernel_nat.carried(session) == (Counters(3, 3000), Counters(5, 70))
    live = kernel_nat.snapshot()
    stack.on_timer(100.0)
    gone = kernel_nat.snapshot()
    for snap, entries in ((live, 2), (gone, 0)):
        assert (snap["packets_up"], snap["bytes_up"]) == (3, 3000)
        assert (snap["packets_down"], snap["bytes_down"]) == (5, 70)
        assert snap["entries"] == entries


def test_a_full_map_leaves_the_flow_to_the_stack(maps: FlowMaps) -> None:
    small = FlowMaps(max_entries=2)
    try:
        stack = _stack()
        kernel_nat = KernelNat(small)
        kernel_nat.follow(stack)
        _syn(stack, 40000, 0.0)
        _syn(stack, 40001, 0.0)  # no room: counted, the SYN still goes back
        assert kernel_nat.stats["installed"] == 1
        assert kernel_nat.stats["install_failed"] == 1
        assert kernel_nat.snapshot()["entries"] == 2  # the first flow's, untouched
        stack.on_timer(100.0)  # both expire: the failed one has nothing to remove
        assert kernel_nat.snapshot()["entries"] == 0
        assert kernel_nat.stats.get("remove_failed", 0) == 0
    finally:
        small.close()
