"""The kernel NAT's flow maps: one BPF hash map per family, filled through bpf(2).

A key is a packet's (source, destination, source port, destination port) as the
program reads it; a value is the rewrite, its checksum differences and the flow's
counters (`layout.ValueLayout`). The counters live in the value the program already
holds -- one lookup per packet, an atomic add for each counter -- so the per-flow
counter map is the flow map itself: reading a flow's counters is a lookup of its key.

Maps are created with BPF_F_NO_PREALLOC: room for every NAT port of a family in both
directions, paid for only by the entries that exist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..ebpf import syscall
from ..ebpf.syscall import BPF_MAP_TYPE_HASH
from ..stack.nat import FIRST_NAT_PORT, LAST_NAT_PORT
from .layout import KEY4_LEN, KEY6_LEN, VALUE4, VALUE6, ValueLayout
from .model import FlowEntry

__all__ = ["Counters", "FlowMaps"]

BPF_F_NO_PREALLOC = 1
#: Two entries (one per direction) for every NAT port of a family.
MAX_FLOW_ENTRIES = 2 * (LAST_NAT_PORT - FIRST_NAT_PORT + 1)


@dataclass(frozen=True, slots=True)
class Counters:
    """What the program carried for one direction of one flow: skbs (a GSO
    super-packet is one) and TCP payload bytes."""

    packets: int = 0
    payload: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.packets + other.packets, self.payload + other.payload)


class FlowMaps:
    """The IPv4 and IPv6 flow maps (their fds go into the program as it is built)."""

    def __init__(self, max_entries: int = MAX_FLOW_ENTRIES) -> None:
        self.fd4 = syscall.map_create(
            BPF_MAP_TYPE_HASH,
            KEY4_LEN,
            VALUE4.size,
            max_entries,
            b"ztun_nat4",
            BPF_F_NO_PREALLOC,
        )
        try:
            self.fd6 = syscall.map_create(
                BPF_MAP_TYPE_HASH,
                KEY6_LEN,
                VALUE6.size,
                max_entries,
                b"ztun_nat6",
                BPF_F_NO_PREALLOC,
            )
        except BaseException:
            os.close(self.fd4)
            raise

    def _map(self, key: bytes) -> tuple[int, ValueLayout]:
        if len(key) == KEY4_LEN:
            return self.fd4, VALUE4
        if len(key) == KEY6_LEN:
            return self.fd6, VALUE6
        raise ValueError(f"flow key of {len(key)} bytes")

    def install(self, key: bytes, entry: FlowEntry) -> None:
        """Add (or replace) the entry for `key`, its counters at zero."""
        self.install_all(((key, entry),))

    def install_all(self, entries: Sequence[tuple[bytes, FlowEntry]]) -> None:
        """Add (or replace) entries of one family in one call (a flow's two directions)."""
        fd, layout = self._map(entries[0][0])
        keys = [key for key, _ in entries]
        values = [
            layout.struct.pack(entry.rewrite, entry.addr_diff, entry.port_diff, 0, 0)
            for _, entry in entries
        ]
        if len(keys) == 1:
            syscall.map_update(fd, keys[0], values[0])
        else:
            syscall.map_update_batch(fd, keys, values)

    def _value(self, key: bytes) -> tuple[bytes, int, int, int, int] | None:
        fd, layout = self._map(key)
        raw = syscall.map_lookup(fd, key, layout.size)
        return None if raw is None else layout.struct.unpack(raw)

    def counters(self, key: bytes) -> Counters | None:
        """The entry's counters now, or None when there is no entry."""
        value = self._value(key)
        return None if value is None else Counters(value[3], value[4])

    def entry(self, key: bytes) -> FlowEntry | None:
        value = self._value(key)
        return None if value is None else FlowEntry(*value[:3])

    def remove(self, key: bytes) -> Counters | None:
        """Delete the entry; its last counters (None: there was none), read and deleted
        in one call. A packet the program is rewriting at that moment may still count
        into the entry being freed: the figure is what had been carried when it went."""
        fd, layout = self._map(key)
        raw = syscall.map_lookup_and_delete(fd, key, layout.size)
        if raw is None:
            return None
        _, _, _, packets, payload = layout.struct.unpack(raw)
        return Counters(packets, payload)

    def close(self) -> None:
        for fd in (self.fd4, self.fd6):
            if fd >= 0:
                os.close(fd)
        self.fd4 = self.fd6 = -1
