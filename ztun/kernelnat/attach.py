"""Hang the kernel NAT program on a TUN's egress: a clsact qdisc and a direct-action bpf
filter, through netlink (what `tc qdisc add dev T clsact; tc filter add dev T egress bpf
da fd F` does, without the tc binary).

The netlink work runs in a forked child (`ztun.forked`): the long-running ztun never
loads pyroute2. The child inherits the program's fd, hands it to the kernel in
TCA_BPF_FD, and exits; the filter holds its own reference to the program (and the
program to its maps) from then on.

A clsact qdisc already on the device (another tool's, or one a killed ztun left on a
persistent TUN) is used as it is and left in place; ztun's filter has a fixed priority
and handle, so a leftover one is replaced, never doubled, and `detach` removes exactly
it. A non-persistent TUN takes qdisc and filter with it when it goes.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from ..forked import call_in_child
from ..netns import netlink_in

__all__ = ["Attached", "attach", "detach", "egress_programs"]

#: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS) (include/uapi/linux/pkt_sched.h).
EGRESS_PARENT = 0xFFFFFFF3
FILTER_PRIO = 0x7A70  # "zp": ztun's slot among the egress filters
FILTER_HANDLE = 1
FILTER_NAME = "ztun_nat"


@dataclass(frozen=True, slots=True)
class Attached:
    """Where the program hangs, and whether ztun added the clsact qdisc for it."""

    ifindex: int
    netns: str | None
    added_clsact: bool


def _has_clsact(ipr: Any, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def _attach_job(ipr: Any, ifindex: int, prog_fd: int) -> bool:
    added = False
    if not _has_clsact(ipr, ifindex):
        ipr.tc("add", "clsact", index=ifindex)
        added = True
    try:
        ipr.tc(
            "replace-filter",
            "bpf",
            index=ifindex,
            handle=FILTER_HANDLE,
            parent=EGRESS_PARENT,
            prio=FILTER_PRIO,
            fd=prog_fd,
            name=FILTER_NAME,
            direct_action=True,
        )
    except BaseException:
        if added:
            ipr.tc("del", "clsact", index=ifindex)
        raise
    return added


def attach(ifindex: int, prog_fd: int, *, netns: str | None = None) -> Attached:
    """Attach `prog_fd` to the egress of the device `ifindex` (in `netns`, None: here).
    Raises OSError (errno from netlink: EPERM without CAP_NET_ADMIN, EOPNOTSUPP or
    ENOENT where the kernel has no clsact or cls_bpf)."""
    added = call_in_child(lambda: netlink_in(netns, lambda ipr: _attach_job(ipr, ifindex, prog_fd)))
    return Attached(ifindex, netns, added)


def _detach_job(ipr: Any, attached: Attached) -> None:
    try:
        if attached.added_clsact:
            ipr.tc("del", "clsact", index=attached.ifindex)  # its filters go with it
        else:
            ipr.tc(
                "del-filter",
                "bpf",
                index=attached.ifindex,
                handle=FILTER_HANDLE,
                parent=EGRESS_PARENT,
                prio=FILTER_PRIO,
            )
    except Exception as exc:  # pyroute2's NetlinkError
        # Gone already: the device was deleted, or someone removed the qdisc.
        if getattr(exc, "code", None) not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
            raise


def detach(attached: Attached) -> None:
    """Take the program off the device again (nothing to do if the device is gone)."""
    call_in_child(lambda: netlink_in(attached.netns, lambda ipr: _detach_job(ipr, attached)))


def egress_programs(ifindex: int, *, netns: str | None = None) -> list[str]:
    """The names of the bpf filters on the device's egress (for status and tests)."""

    def job(ipr: Any) -> list[str]:
        names = []
        for msg in ipr.get_filters(index=ifindex, parent=EGRESS_PARENT):
            options = msg.get_attr("TCA_OPTIONS")
            if msg.get_attr("TCA_KIND") == "bpf" and options is not None:
                name = options.get_attr("TCA_BPF_NAME")
                if name:
                    names.append(str(name))
        return names

    return call_in_child(lambda: netlink_in(netns, job))
