"""Proxy health, sans-IO: outcomes and a fake clock in, state and transitions out."""

from __future__ import annotations

import pytest

from ztun.outbound.errors import (
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    Rejected,
    TargetUnsupported,
    UdpNotSupported,
)
from ztun.outbound.health import (
    DOWN_AFTER,
    RECHECK_INTERVAL,
    CameUp,
    Health,
    ProbeSchedule,
    Verdict,
    WentDown,
    classify,
)
from ztun.outbound.policy import Policy, candidates
from ztun.outbound.socks5_proto import Reply

T0 = 1000.0


@pytest.mark.parametrize(
    ("error", "udp", "verdict"),
    [
        (ProxyUnreachable("x", refused=True), False, Verdict.REFUSED),
        (ProxyUnreachable("timed out"), False, Verdict.FAILED),
        (ProxyTimeout("x"), False, Verdict.FAILED),
        (TimeoutError(), False, Verdict.FAILED),
        (ProxyAuthFailed("x"), False, Verdict.FAILED),
        (ProxyProtocolError("x"), False, Verdict.FAILED),
        (ProxyRefused(Reply.NOT_ALLOWED), False, Verdict.NOT_CONCERNED),
        (ProxyRefused(Reply.GENERAL_FAILURE), False, Verdict.FAILED),
        # the target's own refusal: the proxy answered, so it works
        (ProxyRefused(Reply.CONNECTION_REFUSED), False, Verdict.ALIVE),
        (ProxyRefused(Reply.HOST_UNREACHABLE), False, Verdict.ALIVE),
        (ProxyRefused(Reply.GENERAL_FAILURE, "x", target_fault=True), False, Verdict.ALIVE),
        (TargetUnsupported("x"), False, Verdict.NOT_CONCERNED),
        (UdpNotSupported("x"), False, Verdict.NOT_CONCERNED),
        (Rejected("x"), False, Verdict.NOT_CONCERNED),
        # UDP ASSOCIATE: only reaching the proxy counts (microsocks refuses the command)
        (ProxyRefused(Reply.COMMAND_NOT_SUPPORTED), True, Verdict.NOT_CONCERNED),
        (ProxyUnreachable("x", refused=True), True, Verdict.REFUSED),
        (ProxyTimeout("x"), True, Verdict.FAILED),
        (ValueError("a bug"), False, Verdict.NOT_CONCERNED),
    ],
)
def test_classify(error: BaseException, udp: bool, verdict: Verdict) -> None:
    assert classify(error, udp=udp) is verdict


def test_down_after_two_failures_up_after_one_success() -> None:
    h = Health(["a", "b"], T0)
    assert h.is_up("a") and h.state("a").since == T0
    assert h.failed("a", T0 + 1, "timed out") == []  # one failure is not enough
    assert h.is_up("a") and h.state("a").failures == 1
    assert DOWN_AFTER == 2
    assert h.failed("a", T0 + 2, "timed out again") == [WentDown("a", "timed out again", T0 + 2)]
    assert not h.is_up("a") and h.is_up("b")
    assert h.failed("a", T0 + 3, "still") == []  # down stays down, quietly
    assert h.state("a").failures == 3 and h.state("a").last_error == "still"
    assert h.succeeded("a", T0 + 4, rtt_ms=2.5) == [CameUp("a", T0 + 4, 2.5)]
    state = h.state("a")
    assert (state.up, state.since, state.failures, state.rtt_ms) == (True, T0 + 4, 0, 2.5)
    assert state.last_error == "still"  # the last error is kept for status


def test_a_success_resets_the_count() -> None:
    h = Health(["a"], T0)
    h.failed("a", T0 + 1, "x")
    assert h.succeeded("a", T0 + 2) == []
    assert h.failed("a", T0 + 3, "x") == []  # counting starts over
    assert h.is_up("a")


def test_a_refused_connect_takes_it_down_at_once() -> None:
    h = Health(["a"], T0)
    events = h.report("a", T0 + 1, ProxyUnreachable("socks5 proxy a: refused", refused=True))
    assert events == [WentDown("a", "socks5 proxy a: refused", T0 + 1)]


def test_report_applies_the_verdict() -> None:
    h = Health(["a"], T0)
    h.failed("a", T0, "x")
    assert h.report("a", T0 + 1, ProxyRefused(Reply.CONNECTION_REFUSED)) == []
    assert h.state("a").failures == 0  # the target refused: the proxy answered
    assert h.report("a", T0 + 2, TargetUnsupported("no v6")) == []
    assert h.report("a", T0 + 3, ProxyAuthFailed("bad password")) == []
    assert h.report("a", T0 + 4, ProxyAuthFailed("bad password")) == [
        WentDown("a", "bad password", T0 + 4)
    ]


def test_active_flows_and_snapshot_in_unix_time() -> None:
    h = Health(["a", "b"], T0)
    h.opened("a")
    h.opened("a")
    h.closed("a")
    h.closed("b")  # never below zero
    h.failed("b", T0 + 5, "refused", refused=True)
    wall = 1_700_000_000.0  # the wall clock when the fake clock said T0 + 10
    snap = h.snapshot(wall - (T0 + 10))
    assert snap == [
        {
            "name": "a",
            "up": True,
            "since": wall - 10,
            "last_error": None,
            "active": 1,
            "failures": 0,
            "rtt_ms": None,
        },
        {
            "name": "b",
            "up": False,
            "since": wall - 5,
            "last_error": "refused",
            "active": 0,
            "failures": 1,
            "rtt_ms": None,
        },
    ]


# -- the probe schedule -----------------------------------------------------------------------


def test_probed_group_checks_every_member_each_interval() -> None:
    h = Health(["a", "b"], T0)
    s = ProbeSchedule(["a", "b"], 5.0, probe_up=True)
    assert s.due(T0, h) == ["a", "b"]  # first probes at once
    s.started("a", T0)
    s.started("b", T0 + 1)
    assert s.due(T0 + 4.9, h) == []
    assert s.next_due(h) == T0 + 5
    assert s.due(T0 + 5, h) == ["a"]


def test_down_member_is_rechecked_sooner() -> None:
    h = Health(["a", "b"], T0)
    s = ProbeSchedule(["a", "b"], 5.0, probe_up=True)
    for name in ("a", "b"):
        s.started(name, T0)
    h.failed("a", T0 + 2, "refused", refused=True)
    assert s.next_due(h) == T0 + 2 + RECHECK_INTERVAL  # a period after it went down
    assert s.due(T0 + 2 + RECHECK_INTERVAL, h) == ["a"]


def test_without_a_probe_only_down_members_are_checked() -> None:
    h = Health(["a", "b"], T0)
    s = ProbeSchedule(["a", "b"], 0.5, probe_up=False)
    assert s.due(T0 + 100, h) == [] and s.next_due(h) is None  # real traffic only
    h.failed("b", T0 + 100, "refused", refused=True)
    assert s.next_due(h) == T0 + 100.5  # min(interval, RECHECK_INTERVAL)
    s.started("b", T0 + 100.5)
    assert s.due(T0 + 100.9, h) == [] and s.due(T0 + 101, h) == ["b"]
    h.succeeded("b", T0 + 101)
    assert s.next_due(h) is None


# -- policies ---------------------------------------------------------------------------------


def order(policy: Policy, up: set[str], active: dict[str, int], turn: int = 0) -> list[str]:
    return candidates(
        policy,
        ["a", "b", "c"],
        is_up=lambda m: m in up,
        active=lambda m: active.get(m, 0),
        turn=turn,
    )


def test_failover_takes_the_first_up_member() -> None:
    assert order(Policy.FAILOVER, {"a", "b", "c"}, {}) == ["a", "b", "c"]
    assert order(Policy.FAILOVER, {"b", "c"}, {"b": 9}) == ["b", "c"]
    assert order(Policy.FAILOVER, set(), {}) == []


def test_round_robin_rotates_and_skips_down_members() -> None:
    firsts = [order(Policy.ROUND_ROBIN, {"a", "b", "c"}, {}, turn)[0] for turn in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    # b is down: the up members share the turns evenly (no double share for c)
    firsts = [order(Policy.ROUND_ROBIN, {"a", "c"}, {}, turn)[0] for turn in range(4)]
    assert firsts == ["a", "c", "a", "c"]
    assert order(Policy.ROUND_ROBIN, {"a", "c"}, {}, 1) == ["c", "a"]


def test_round_robin_shares_evenly_with_a_member_down() -> None:
    members = ["a", "b", "c", "d"]
    counts = dict.fromkeys(members, 0)
    for turn in range(300):
        first = candidates(
            Policy.ROUND_ROBIN, members, is_up=lambda m: m != "b", active=lambda m: 0, turn=turn
        )[0]
        counts[first] += 1
    assert counts == {"a": 100, "b": 0, "c": 100, "d": 100}


def test_least_connections_prefers_the_idlest_then_the_order() -> None:
    assert order(Policy.LEAST_CONNECTIONS, {"a", "b", "c"}, {"a": 3, "b": 1, "c": 1}) == [
        "b",
        "c",
        "a",
    ]
    assert order(Policy.LEAST_CONNECTIONS, {"a", "c"}, {"a": 3, "b": 0, "c": 4}) == ["a", "c"]
