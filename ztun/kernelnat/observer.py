"""The kernel NAT as the stack sees it: a `NatObserver` that mirrors every TCP NAT entry
into the flow maps, and the set-up and tear-down around it.

`KernelNat.start(ifindex)` creates the maps, loads the program over them and attaches it
to the TUN's egress; `follow(stack)` makes it the stack's observer (mirroring the
entries the stack already holds: their flows move to the kernel from their next
packet on, the ones in flight are rewritten by the stack the same way). From then on
the stack calls `installed` for each new NAT entry before its SYN goes back and
`removed` when the entry goes; `removed` reads what the kernel carried for the flow.

With `--workers` the parent starts it (before forking: every worker inherits the map
fds) and each worker follows its own stack; the maps are shared, the NAT port shards
keep the workers' keys apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from typing import TYPE_CHECKING

from ..ebpf import BpfError
from . import program
from .attach import Attached, attach, detach
from .maps import Counters, FlowMaps
from .model import entries_for

if TYPE_CHECKING:
    from ..stack import SystemStack, TcpNatTable, TcpSession

log = logging.getLogger("ztun")

__all__ = ["KernelNat"]


def _flow(session: TcpSession) -> tuple[bytes, int, bytes, int]:
    return session.client_addr, session.client_port, session.dst_addr, session.dst_port


class KernelNat:
    def __init__(self, maps: FlowMaps, attached: Attached | None = None) -> None:
        self.maps = maps
        self.attached = attached
        self.stats: Counter[str] = Counter()
        self._tables: dict[int, TcpNatTable] = {}
        # Which session a key belongs to (and whether it is the app's direction, "up"):
        # an app reusing its port while the previous flow lingers gets a new session
        # under the same app-side key, and the old one's removal must not take the new
        # one's entry.
        self._owners: dict[bytes, tuple[TcpSession, bool]] = {}
        # Each mirrored session's two keys (app side, answer side), so removal need not
        # derive them again.
        self._keys: dict[TcpSession, tuple[bytes, bytes]] = {}

    @classmethod
    def start(cls, ifindex: int, *, netns: str | None = None) -> KernelNat:
        """Maps, program, filter on the egress of device `ifindex`. Raises OSError
        (BpfError from bpf(2), or netlink's errno) when any of it is refused."""
        maps = FlowMaps()
        try:
            ipv6_flag = program.ipv6_flag_supported()
            if not ipv6_flag:
                log.info(
                    "kernel NAT: no BPF_F_IPV6 here; forwarded CHECKSUM_COMPLETE IPv6 "
                    "is checked again in software by the receiver"
                )
            prog_fd = program.load(maps.fd4, maps.fd6, ipv6_flag=ipv6_flag)
            try:
                attached = attach(ifindex, prog_fd, netns=netns)
            finally:
                os.close(prog_fd)  # the filter holds the program now
        except BaseException:
            maps.close()
            raise
        return cls(maps, attached)

    def follow(self, stack: SystemStack) -> None:
        """Become `stack`'s NAT observer; mirror the entries it holds already."""
        self._tables = {nat.version: nat for nat in (stack.nat4, stack.nat6) if nat is not None}
        stack.nat_observer = self
        for nat in self._tables.values():
            # A lingering session and its successor share the app-side key: the one the
            # table maps the flow to goes in last, so the key is its.
            for session in sorted(nat, key=lambda s: nat.by_flow(_flow(s)) is s):
                self.installed(session)

    # -- NatObserver -----------------------------------------------------------------------

    def installed(self, session: TcpSession) -> None:
        nat = self._tables.get(session.version)
        if nat is None:
            return
        entries = entries_for(session, nat)
        (app_key, _), (answer_key, _) = entries
        try:
            for key, _ in entries:
                previous = self._owners.get(key)
                if previous is not None and previous[0] is not session:
                    self._count(self.maps.counters(key), up=previous[1])
            self.maps.install_all(entries)
        except BpfError as exc:
            # The flow stays with the stack. Were the pair half-installed, the kernel
            # would rewrite one direction exactly as the stack does the other -- but that
            # entry would have no owner to remove it: take both keys out again.
            self.stats["install_failed"] += 1
            log.debug("kernel NAT: entry for port %d not installed: %s", session.nat_port, exc)
            for key in (app_key, answer_key):
                self._owners.pop(key, None)
                with contextlib.suppress(BpfError):
                    self.maps.remove(key)
            return
        self._owners[app_key] = (session, True)
        self._owners[answer_key] = (session, False)
        self._keys[session] = (app_key, answer_key)
        self.stats["installed"] += 1

    def removed(self, session: TcpSession) -> None:
        keys = self._keys.pop(session, None)
        if keys is None:
            return
        for key in keys:
            owner = self._owners.get(key)
            if owner is None or owner[0] is not session:
                continue
            del self._owners[key]
            try:
                self._count(self.maps.remove(key), up=owner[1])
            except BpfError as exc:
                self.stats["remove_failed"] += 1
                log.debug("kernel NAT: entry for port %d not removed: %s", session.nat_port, exc)

    # -- what the kernel carried -----------------------------------------------------------

    def _count(
        self, counters: Counters | None, *, up: bool, into: Counter[str] | None = None
    ) -> None:
        if counters is None:
            return
        totals = self.stats if into is None else into
        direction = "up" if up else "down"
        totals[f"packets_{direction}"] += counters.packets
        totals[f"bytes_{direction}"] += counters.payload

    def carried(self, session: TcpSession) -> tuple[Counters, Counters]:
        """(up, down): what the kernel rewrote for `session` so far (its live entries)."""
        found = [Counters(), Counters()]
        for direction, key in enumerate(self._keys.get(session, ())):
            owner = self._owners.get(key)
            if owner is not None and owner[0] is session:
                found[direction] = self.maps.counters(key) or Counters()
        return found[0], found[1]

    def snapshot(self) -> dict[str, int]:
        """What the kernel carried (skbs and TCP payload bytes each way, live entries
        read now), how many entries are live, and what failed."""
        totals = Counter(self.stats)
        for key, (_, up) in self._owners.items():
            with contextlib.suppress(BpfError):
                self._count(self.maps.counters(key), up=up, into=totals)
        return {**dict(sorted(totals.items())), "entries": len(self._owners)}

    def stop(self, *, detach_program: bool = True) -> None:
        """Take the program off the device (the owner of the attachment) and close the
        maps; a worker only closes its map fds."""
        try:
            if detach_program and self.attached is not None:
                detach(self.attached)
                self.attached = None
        finally:
            self.maps.close()
