"""The fake-IP pool: a stable domain <-> address map inside reserved ranges.

Fake-IP DNS answers every A/AAAA query with an address from a range nobody routes
(198.18.0.0/15 is RFC 2544's benchmarking block, fc00::/18 a slice of unique-local
space); when a connection to such an address reaches the TUN, the pool gives back the
domain and the SOCKS5 CONNECT carries the *name*, so the proxy resolves it (remote DNS)
and nothing is resolved locally.

Design choices, all deliberate:

* **Stable mapping.**  A domain keeps its address for as long as it stays in the pool, so
  re-queries (after the short TTL) return the same answer and connections opened from an
  older answer still map back to the same domain.
* **LRU reuse when full.**  When the range (or ``max_entries``) is exhausted, the address of
  the least recently *used* domain -- by a query or by a connection -- is recycled.  A
  recycled address was idle for longer than every other entry, the safest one to reuse;
  with the default capacity that is 65,536 newer domains ago.
* **Bounded memory.**  ``max_entries`` caps each family (a /18 of IPv6 is far too large to
  fill), about 150 bytes per entry.
* **Sans-IO.**  Persistence is ``to_state()``/``from_state()`` (JSON-safe dicts);
  :mod:`ztun.dns.state` writes them atomically.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any

DEFAULT_V4_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_V6_RANGE = ipaddress.IPv6Network("fc00::/18")
DEFAULT_MAX_ENTRIES = 65536
STATE_VERSION = 1
MAX_DOMAIN_LENGTH = 253  # RFC 1035 2.3.4, without the trailing dot

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_domain(name: str) -> str:
    """Lower-case, no trailing dot: the one spelling the pool and the rules use."""
    domain = name.rstrip(".").lower()
    if not domain or len(domain) > MAX_DOMAIN_LENGTH:
        raise ValueError(f"not a domain name: {name!r}")
    return domain


class _FamilyPool:
    """One range: offsets into it, LRU-ordered (oldest first)."""

    __slots__ = ("by_domain", "by_offset", "capacity", "first", "network", "next_offset")

    def __init__(self, network: IPNetwork, max_entries: int) -> None:
        self.network = network
        # Skip the network address, and for IPv4 the broadcast one: some stacks refuse them.
        usable = network.num_addresses - (2 if network.version == 4 else 1)
        if usable < 1:
            raise ValueError(f"fake-IP range {network} has no usable address")
        self.first = int(network.network_address) + 1
        self.capacity = min(usable, max_entries)
        self.by_domain: dict[str, int] = {}
        self.by_offset: OrderedDict[int, str] = OrderedDict()
        self.next_offset = 0

    def address(self, offset: int) -> IPAddress:
        return ipaddress.ip_address(self.first + offset)

    def get(self, domain: str) -> int | None:
        offset = self.by_domain.get(domain)
        if offset is not None:
            self.by_offset.move_to_end(offset)
        return offset

    def allocate(self, domain: str) -> tuple[int, bool]:
        """(offset, whether the map changed)."""
        offset = self.get(domain)
        if offset is not None:
            return offset, False
        if self.next_offset < self.capacity:
            offset = self.next_offset
            self.next_offset += 1
        else:
            offset, evicted = self.by_offset.popitem(last=False)
            del self.by_domain[evicted]
        self.by_domain[domain] = offset
        self.by_offset[offset] = domain
        return offset, True

    def reverse(self, addr: IPAddress) -> str | None:
        if addr not in self.network:
            return None
        offset = int(addr) - self.first
        domain = self.by_offset.get(offset)
        if domain is not None:
            self.by_offset.move_to_end(offset)
        return domain

    def to_state(self) -> dict[str, Any]:
        return {
            "range": str(self.network),
            "next": self.next_offset,
            "entries": [[off, dom] for off, dom in self.by_offset.items()],
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore entries (oldest first); ignores what no longer fits the capacity."""
        entries = [(int(off), normalize_domain(str(dom))) for off, dom in state["entries"]]
        entries = [(off, dom) for off, dom in entries if 0 <= off < self.capacity]
        for off, dom in entries[-self.capacity :]:
            if dom in self.by_domain or off in self.by_offset:
                continue
            self.by_domain[dom] = off
            self.by_offset[off] = dom
        used = max(self.by_offset, default=-1) + 1
        self.next_offset = min(self.capacity, max(int(state.get("next", 0)), used))


class FakeIpPool:
    """Domain <-> fake address, per family, LRU-recycled; pure (no I/O, no clock)."""

    def __init__(
        self,
        v4: ipaddress.IPv4Network | None = DEFAULT_V4_RANGE,
        v6: ipaddress.IPv6Network | None = DEFAULT_V6_RANGE,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._v4 = _FamilyPool(v4, max_entries) if v4 is not None else None
        self._v6 = _FamilyPool(v6, max_entries) if v6 is not None else None
        self.dirty = False  # changed since the last to_state(): time to persist

    @property
    def v4_range(self) -> ipaddress.IPv4Network | None:
        return self._v4.network if self._v4 is not None else None  # type: ignore[return-value]

    @property
    def v6_range(self) -> ipaddress.IPv6Network | None:
        return self._v6.network if self._v6 is not None else None  # type: ignore[return-value]

    def _family(self, version: int) -> _FamilyPool | None:
        return self._v4 if version == 4 else self._v6

    def allocate(self, domain: str, version: int) -> IPAddress | None:
        """The fake address of ``domain`` (allocating one); None if that family is off."""
        fam = self._family(version)
        if fam is None:
            return None
        offset, changed = fam.allocate(normalize_domain(domain))
        self.dirty |= changed
        return fam.address(offset)

    def lookup(self, domain: str, version: int) -> IPAddress | None:
        """The address already given to ``domain``, without allocating."""
        fam = self._family(version)
        if fam is None:
            return None
        offset = fam.get(normalize_domain(domain))
        return fam.address(offset) if offset is not None else None

    def domain_for(self, addr: IPAddress | str) -> str | None:
        """The domain behind a fake address (a connection to it counts as a use)."""
        ip = ipaddress.ip_address(addr)
        fam = self._family(ip.version)
        return fam.reverse(ip) if fam is not None else None

    def is_fake(self, addr: IPAddress | str) -> bool:
        """True if ``addr`` lies in a fake range (allocated or not)."""
        ip = ipaddress.ip_address(addr)
        fam = self._family(ip.version)
        return fam is not None and ip in fam.network

    def __len__(self) -> int:
        return sum(len(f.by_domain) for f in (self._v4, self._v6) if f is not None)

    def to_state(self) -> dict[str, Any]:
        """JSON-safe snapshot (clears ``dirty``)."""
        self.dirty = False
        return {
            "version": STATE_VERSION,
            "v4": self._v4.to_state() if self._v4 is not None else None,
            "v6": self._v6.to_state() if self._v6 is not None else None,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        v4: ipaddress.IPv4Network | None = DEFAULT_V4_RANGE,
        v6: ipaddress.IPv6Network | None = DEFAULT_V6_RANGE,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> FakeIpPool:
        """A pool with ``state``'s entries for each family whose range is unchanged.

        A family whose configured range differs from the saved one starts empty: its old
        addresses would mean other domains now.  Raises ValueError on a malformed state.
        """
        pool = cls(v4, v6, max_entries=max_entries)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError("unknown fake-IP state version")
        try:
            for key, fam in (("v4", pool._v4), ("v6", pool._v6)):
                saved = state.get(key)
                if fam is not None and saved and saved.get("range") == str(fam.network):
                    fam.load(saved)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed fake-IP state: {exc}") from exc
        return pool
