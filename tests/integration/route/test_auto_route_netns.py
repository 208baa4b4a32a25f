"""Auto-route in a real kernel: the rules steer as designed, and every kind of exit --
normal, failed apply, SIGKILL mid-way or after -- restores routing byte-for-byte."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.route.route_ns import RouteNs
from ztun.route import (
    AutoRouteConfig,
    Journal,
    PolicyRule,
    RouteChange,
    TableRoute,
    plan_auto_route,
)
from ztun.route.linux import RouteError, apply, recover, restore

pytestmark = pytest.mark.netns

CHILD_READY_TIMEOUT = 20.0
PROXY = ipaddress.ip_address("198.51.100.7")
EXCLUDED = ipaddress.ip_network("203.0.113.0/24")
# What the kernel answers for a blocked lookup: ENETUNREACH (v4 rule/route), EHOSTUNREACH (v6).
BLOCKED = ("Network is unreachable", "No route to host")


def plan(ns: RouteNs, **overrides: object) -> list[RouteChange]:
    kwargs: dict[str, object] = {
        "device": ns.tun,
        "tun_addresses": (ipaddress.ip_interface("172.19.0.1/30"),),
        "proxy_addresses": (PROXY,),
        "exclude": (EXCLUDED,),
        "strict": True,
        "capture_dns": True,
    }
    kwargs.update(overrides)
    return plan_auto_route(AutoRouteConfig(**kwargs))  # type: ignore[arg-type]


def route_get(ns: RouteNs, *args: str) -> str:
    """The device the kernel picks for a lookup, or the error it answers."""
    res = ns.ip("route", "get", *args, check=False)
    if res.returncode != 0:
        return res.stderr.strip().removeprefix("RTNETLINK answers: ")
    words = res.stdout.split()
    return words[words.index("dev") + 1]


def test_rules_steer_traffic_as_designed(route_ns: RouteNs, tmp_path: Path) -> None:
    ns = route_ns
    before = ns.snapshot()
    journal = Journal(tmp_path / "zt0.journal")
    apply(plan(ns), journal, ns.name)
    try:
        assert route_get(ns, "1.1.1.1") == ns.tun
        assert route_get(ns, "1.1.1.1", "mark", "0x2022") == ns.uplink  # ztun's own sockets
        assert route_get(ns, "10.250.0.7") == ns.uplink  # on-link wins (suppress rule)
        assert route_get(ns, "203.0.113.9") == ns.uplink  # --exclude
        assert route_get(ns, str(PROXY)) == ns.uplink  # the proxy never loops
        # a LAN resolver is still reached through the TUN, so DNS cannot leak around it
        assert route_get(ns, "10.250.0.1", "ipproto", "udp", "dport", "53") == ns.tun
        assert route_get(ns, "10.250.0.1", "ipproto", "tcp", "dport", "53") == ns.tun
        # strict: IPv6 is not carried, so it is blocked -- but on-link IPv6 still works
        assert route_get(ns, "2001:db8::1") in BLOCKED
        assert route_get(ns, "fd00:250::5") == ns.uplink
        # strict: a socket bound to the uplink cannot go around the TUN: IPv6 is refused;
        # IPv4 gets the kernel's "assume on-link" fallback, which never uses the gateway
        assert route_get(ns, "2001:db8::1", "oif", ns.uplink) in BLOCKED
        bound = ns.ip("route", "get", "1.1.1.1", "oif", ns.uplink).stdout
        assert "via" not in bound, bound
        assert route_get(ns, "1.1.1.1", "oif", ns.uplink, "mark", "0x2022") == ns.uplink
    finally:
        report = restore(journal, ns.name)
    assert report.removed == len(plan(ns)) and not report.errors
    assert not journal.exists()
    assert ns.snapshot() == before


def test_strict_fails_closed_when_the_tun_vanishes(route_ns: RouteNs, tmp_path: Path) -> None:
    """ztun dies, its TUN goes and the kernel flushes its routes: nothing may leak."""
    ns = route_ns
    rules_before = ns.ip("-4", "rule").stdout + ns.ip("-6", "rule").stdout
    journal = Journal(tmp_path / "j")
    apply(plan(ns), journal, ns.name)
    ns.ip("link", "del", ns.tun)
    assert route_get(ns, "1.1.1.1") in BLOCKED
    report = restore(journal, ns.name)
    assert report.absent == 1  # the TUN's default route went with the TUN
    assert route_get(ns, "1.1.1.1") == ns.uplink
    assert ns.ip("-4", "rule").stdout + ns.ip("-6", "rule").stdout == rules_before
    assert ns.ip("-6", "route", "show", "table", "2022").stdout == ""


def test_without_strict_ipv6_and_bound_sockets_use_main(route_ns: RouteNs, tmp_path: Path) -> None:
    ns = route_ns
    journal = Journal(tmp_path / "j")
    apply(plan(ns, strict=False, capture_dns=False), journal, ns.name)
    try:
        assert route_get(ns, "1.1.1.1") == ns.tun
        assert route_get(ns, "2001:db8::1") == ns.uplink
        assert route_get(ns, "1.1.1.1", "oif", ns.uplink) == ns.uplink
    finally:
        restore(journal, ns.name)


CHILD = """
import json, sys
from ztun.route import Journal, change_from_json
from ztun.route.linux import apply
changes = [change_from_json(c) for c in json.loads(sys.argv[1])]
stop_at = int(sys.argv[4])
def hook(seq, change):
    if seq == stop_at:
        print(f"stopped {seq}", flush=True)
        sys.stdin.read()
apply(changes, Journal(sys.argv[2]), sys.argv[3], progress=hook)
print("applied", flush=True)
sys.stdin.read()
"""


def _run_and_kill(changes: list[RouteChange], journal: Journal, ns: RouteNs, stop_at: int) -> str:
    """Run ``apply`` in a child, SIGKILL it once it reports the chosen point; its line."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            json.dumps([c.to_json() for c in changes]),
            str(journal.path),
            ns.name,
            str(stop_at),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], CHILD_READY_TIMEOUT)
        line = child.stdout.readline().strip() if ready else ""
        if not line:  # died or hung: stop it first so its stderr can be read whole
            child.kill()
            child.wait(timeout=CHILD_READY_TIMEOUT)
            assert child.stderr is not None
            pytest.fail(f"apply child did not report in time: {child.stderr.read()}")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=CHILD_READY_TIMEOUT) == -signal.SIGKILL
        return line
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=CHILD_READY_TIMEOUT)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("stop_at", ["all", 0, 5])
def test_sigkill_then_restore_is_byte_for_byte(
    route_ns: RouteNs, tmp_path: Path, stop_at: str | int
) -> None:
    ns = route_ns
    changes = plan(ns)
    before = ns.snapshot()
    journal = Journal(tmp_path / "zt0.journal")
    line = _run_and_kill(changes, journal, ns, -1 if stop_at == "all" else int(stop_at))
    state = journal.read()
    if stop_at == "all":
        assert line == "applied" and state.applied
        assert len(state.done) == len(changes)
    else:
        assert line == f"stopped {stop_at}" and not state.applied
        assert max(state.intents) == stop_at
    assert ns.snapshot() != before  # the crash really left changes behind

    report = restore(journal, ns.name)
    assert not report.errors
    assert ns.snapshot() == before
    assert not journal.exists()
    # idempotent: a second restore (e.g. `ztun cleanup` after the next start did it) is a no-op
    assert restore(journal, ns.name).removed == 0
    assert ns.snapshot() == before


def test_next_start_recovers_then_applies(route_ns: RouteNs, tmp_path: Path) -> None:
    ns = route_ns
    changes = plan(ns)
    before = ns.snapshot()
    journal = Journal(tmp_path / "zt0.journal")
    _run_and_kill(changes, journal, ns, -1)
    with pytest.raises(Exception, match="restore it first"):
        apply(changes, journal, ns.name)  # refuses to stack a second run on the leftovers
    report = recover(journal, ns.name)
    assert report is not None and report.removed == len(changes)
    assert recover(journal, ns.name) is None
    apply(changes, journal, ns.name)
    restore(journal, ns.name)
    assert ns.snapshot() == before


def test_failed_apply_rolls_back(route_ns: RouteNs, tmp_path: Path) -> None:
    ns = route_ns
    before = ns.snapshot()
    journal = Journal(tmp_path / "j")
    changes = plan(ns)
    # the TUN vanishes between planning and applying: the v4 default route cannot be added
    first = changes[0]
    assert isinstance(first, TableRoute)
    broken = [*changes[1:], dataclasses.replace(first, device="nope0")]
    with pytest.raises(RouteError, match="no device 'nope0'"):
        apply(broken, journal, ns.name)
    assert ns.snapshot() == before
    assert not journal.exists()


def test_preexisting_entry_is_left_in_place(route_ns: RouteNs, tmp_path: Path) -> None:
    ns = route_ns
    ns.ip("-4", "rule", "add", "lookup", "main", "suppress_prefixlength", "0", "priority", "9000")
    before = ns.snapshot()
    journal = Journal(tmp_path / "j")
    changes = plan(ns)
    apply(changes, journal, ns.name)
    assert len(journal.read().preexisting) == 1
    report = restore(journal, ns.name)
    assert report.kept == 1 and report.removed == len(changes) - 1
    assert ns.snapshot() == before


def test_dual_stack_tun(route_ns: RouteNs, tmp_path: Path) -> None:
    ns = route_ns
    ns.ip("addr", "add", "fdfe:dcba:9876::1/126", "dev", ns.tun, "nodad")
    before = ns.snapshot()
    journal = Journal(tmp_path / "j")
    changes = plan(
        ns,
        tun_addresses=(
            ipaddress.ip_interface("172.19.0.1/30"),
            ipaddress.ip_interface("fdfe:dcba:9876::1/126"),
        ),
    )
    assert any(isinstance(c, PolicyRule) and c.family == socket.AF_INET6 for c in changes)
    apply(changes, journal, ns.name)
    try:
        assert route_get(ns, "2001:db8::1") == ns.tun
        assert route_get(ns, "2001:db8::1", "mark", "0x2022") == ns.uplink
    finally:
        restore(journal, ns.name)
    assert ns.snapshot() == before


def test_snapshot_compares_real_state(route_ns: RouteNs) -> None:
    """Guard against a vacuous byte-for-byte check: the snapshot does see the tables."""
    snap = route_ns.snapshot()
    assert "default via 10.250.0.1 dev uplink0" in snap
    assert "fd00:250::1" in snap
    assert "32766:" in snap
