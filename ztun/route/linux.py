"""Apply and restore an auto-route plan on Linux over rtnetlink (pyroute2; never ``ip``).

``apply`` journals each change (fsynced) before sending it, so ``restore`` can always undo
a run that died at any point; ``restore`` removes only entries that match the journal
exactly and treats "already gone" as success, so it can run any number of times.

pyroute2 >= 0.9's synchronous ``IPRoute`` drives its own event loop and refuses to run
inside a running asyncio loop: call these functions before the loop starts, after it
ends, or through ``await asyncio.to_thread(...)``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ztun.route.journal import Journal
from ztun.route.journaled import ProgressHook, append_changes, restore_changes
from ztun.route.model import (  # the last two cross back from a netlink child: no pyroute2
    JournalChange,
    PolicyRule,
    RestoreReport,
    RouteChange,
    RouteError,
    TableRoute,
)

log = logging.getLogger(__name__)

FIB_RULE_INVERT = 0x2  # linux/fib_rules.h
FR_ACT_TO_TBL = 1
FR_ACT_UNREACHABLE = 7
RTN_UNICAST = 1  # linux/rtnetlink.h
RTN_UNREACHABLE = 7
_NO_SUPPRESS = 0xFFFFFFFF  # kernel reports "no suppress_prefixlength" as -1
_RULE_ACTIONS = {"lookup": FR_ACT_TO_TBL, "unreachable": FR_ACT_UNREACHABLE}
_ROUTE_TYPES = {"unicast": RTN_UNICAST, "unreachable": RTN_UNREACHABLE}
# errno values that mean "the thing to delete is not there" (idempotent restore).
_GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})


@contextmanager
def _rtnl(netns: str | None) -> Iterator[IPRoute]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "ztun.route.linux must not run on an asyncio loop thread (pyroute2 runs its own"
            " loop): use await asyncio.to_thread(...)"
        )
    # This thread enters the namespace itself and keeps the IPRoute to itself: pyroute2
    # 0.9 binds an IPRoute to the thread using it, and its forked netns helpers can time
    # out half-way on a loaded machine.
    from ztun.netns import in_netns

    with in_netns(netns):
        ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()


# -- translation between the plan and netlink ------------------------------------------


def _split(cidr: str) -> tuple[str, int]:
    net = ipaddress.ip_network(cidr)
    return str(net.network_address), net.prefixlen


def _rule_kwargs(rule: PolicyRule) -> dict[str, Any]:
    kw: dict[str, Any] = {"family": rule.family, "priority": rule.priority}
    if rule.action == "lookup":
        kw["table"] = rule.table
    else:
        kw["action"] = _RULE_ACTIONS[rule.action]
    if rule.fwmark is not None:
        kw["fwmark"] = rule.fwmark
        kw["fwmask"] = rule.fwmask if rule.fwmask is not None else 0xFFFFFFFF
    if rule.invert:
        kw["flags"] = FIB_RULE_INVERT
    if rule.dst is not None:
        kw["dst"], kw["dst_len"] = _split(rule.dst)
    if rule.suppress_prefixlength is not None:
        kw["suppress_prefixlen"] = rule.suppress_prefixlength
    if rule.ip_proto is not None:
        kw["ip_proto"] = rule.ip_proto
    if rule.dport is not None:
        kw["dport_range"] = f"{rule.dport}:{rule.dport}"
    return kw


RuleKey = tuple[Any, ...]


def _rule_key(rule: PolicyRule) -> RuleKey:
    dst = str(ipaddress.ip_network(rule.dst)) if rule.dst is not None else None
    return (
        rule.family,
        rule.priority,
        _RULE_ACTIONS[rule.action],
        rule.table if rule.action == "lookup" else 0,
        rule.fwmark,
        (rule.fwmask if rule.fwmask is not None else 0xFFFFFFFF)
        if rule.fwmark is not None
        else None,
        rule.invert,
        dst,
        rule.suppress_prefixlength,
        rule.ip_proto,
        rule.dport,
    )


def _msg_rule_key(msg: Any) -> RuleKey:
    attr = msg.get_attr
    dst_len = msg["dst_len"]
    dst = f"{attr('FRA_DST')}/{dst_len}" if attr("FRA_DST") is not None else None
    suppress = attr("FRA_SUPPRESS_PREFIXLEN")
    dport_range = attr("FRA_DPORT_RANGE")
    dport: int | None = None
    if dport_range is not None:
        start, _, end = str(dport_range).partition(":")
        dport = int(start) if start == end else -1
    fwmark, fwmask = attr("FRA_FWMARK"), attr("FRA_FWMASK")
    if fwmark is None and fwmask is not None:
        fwmark = 0  # the kernel omits FRA_FWMARK for "fwmark 0/MASK"
    table = attr("FRA_TABLE")
    return (
        msg["family"],
        attr("FRA_PRIORITY") or 0,
        msg["action"],
        table if table is not None else msg["table"],
        fwmark,
        fwmask if fwmark is not None else None,
        bool(msg["flags"] & FIB_RULE_INVERT),
        str(ipaddress.ip_network(dst)) if dst is not None else None,
        None if suppress in (None, _NO_SUPPRESS) else suppress,
        attr("FRA_IP_PROTO"),
        dport,
    )


def _rule_present(ipr: IPRoute, rule: PolicyRule) -> bool:
    want = _rule_key(rule)
    return any(_msg_rule_key(m) == want for m in ipr.rule("dump", family=rule.family))


def _ifindex(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _route_kwargs(route: TableRoute, oif: int | None) -> dict[str, Any]:
    dst, dst_len = _split(route.dst)
    kw: dict[str, Any] = {
        "family": route.family,
        "table": route.table,
        "dst": dst,
        "dst_len": dst_len,
        "type": _ROUTE_TYPES[route.type],
    }
    if oif is not None:
        kw["oif"] = oif
    if route.metric is not None:
        kw["priority"] = route.metric
    return kw


def _find_route(ipr: IPRoute, route: TableRoute, oif: int | None) -> Any | None:
    dst, dst_len = _split(route.dst)
    for msg in ipr.route("dump", family=route.family):
        attr = msg.get_attr
        table = attr("RTA_TABLE") if attr("RTA_TABLE") is not None else msg["table"]
        if table != route.table or msg["type"] != _ROUTE_TYPES[route.type]:
            continue
        if msg["dst_len"] != dst_len or (attr("RTA_DST") or _zero(route.family)) != dst:
            continue
        if oif is not None and attr("RTA_OIF") != oif:
            continue
        if route.metric is not None and attr("RTA_PRIORITY") != route.metric:
            continue
        return msg
    return None


def _zero(family: int) -> str:
    return "0.0.0.0" if family == socket.AF_INET else "::"


# -- apply / restore -------------------------------------------------------------------


def _add(ipr: IPRoute, change: RouteChange) -> bool:
    """Add one change; False when the kernel already had it (EEXIST)."""
    try:
        if isinstance(change, PolicyRule):
            ipr.rule("add", **_rule_kwargs(change))
        else:
            oif = None
            if change.device is not None:
                oif = _ifindex(ipr, change.device)
                if oif is None:
                    raise RouteError(f"{change.describe()}: no device {change.device!r}")
            ipr.route("add", **_route_kwargs(change, oif))
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise RouteError(f"{change.describe()}: {exc.args[-1]} (errno {exc.code})") from exc
    return True


def _remove(ipr: IPRoute, change: JournalChange) -> bool:
    """Remove one change if the kernel holds exactly it; False when already gone."""
    if not isinstance(change, PolicyRule | TableRoute):
        raise RouteError(f"{change.describe()}: not a Linux change (another OS's journal)")
    try:
        if isinstance(change, PolicyRule):
            if not _rule_present(ipr, change):
                return False
            ipr.rule("del", **_rule_kwargs(change))
            return True
        oif = None
        if change.device is not None:
            oif = _ifindex(ipr, change.device)
            if oif is None:
                return False  # the kernel drops a device's routes with the device
        if _find_route(ipr, change, oif) is None:
            return False
        ipr.route("del", **_route_kwargs(change, oif))
        return True
    except NetlinkError as exc:
        if exc.code in _GONE:
            return False
        raise RouteError(f"undo {change.describe()}: {exc.args[-1]} (errno {exc.code})") from exc


class LinuxChanger:
    """Makes and unmakes journaled rules and routes over one rtnetlink socket (the
    ``Changer`` that :mod:`ztun.route.journaled` drives)."""

    def __init__(self, ipr: IPRoute) -> None:
        self.ipr = ipr

    def add(self, change: JournalChange) -> bool:
        if not isinstance(change, PolicyRule | TableRoute):
            raise RouteError(f"{change.describe()}: not a Linux change (another OS's journal)")
        return _add(self.ipr, change)

    def remove(self, change: JournalChange) -> bool:
        return _remove(self.ipr, change)


def apply(
    changes: Sequence[RouteChange],
    journal: Journal,
    netns: str | None = None,
    *,
    progress: ProgressHook | None = None,
) -> None:
    """Apply ``changes`` in order, journaling each one before it is made.

    The journal is begun afresh (refused while it still lists an earlier run's changes).
    On any failure the changes made so far are undone (from the journal) and RouteError
    is raised, so the system is left as it was found.  ``progress(seq, change)`` is called
    after each change is in the kernel (tests use it to crash at a chosen point).
    """
    device = next((c.device for c in changes if isinstance(c, TableRoute) and c.device), "unknown")
    with _rtnl(netns) as ipr:
        append_changes(
            changes, journal, device, LinuxChanger(ipr), netns=netns, fresh=True, progress=progress
        )


def restore(journal: Journal, netns: str | None = None) -> RestoreReport:
    """Undo everything ``journal`` lists, newest first; idempotent.

    ``netns`` defaults to the namespace recorded in the journal.  Entries already gone
    count as ``absent``; pre-existing ones are ``kept``.  The journal is deleted only when
    every entry was handled; otherwise RouteError lists what failed and it stays on disk.
    """
    state = journal.read()
    if not state.intents:
        journal.remove()
        return RestoreReport(kept=len(state.preexisting))
    with _rtnl(netns if netns is not None else state.netns) as ipr:
        return restore_changes(journal, LinuxChanger(ipr))


def recover(journal: Journal, netns: str | None = None) -> RestoreReport | None:
    """At start-up: if a previous run left a journal (SIGKILL, crash), restore it first."""
    if not journal.exists():
        return None
    report = restore(journal, netns)
    log.warning(
        "auto-route: restored routing left by an earlier run (%d removed, %d already gone)",
        report.removed,
        report.absent,
    )
    return report
