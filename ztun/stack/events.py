"""What the system stack tells its I/O adapter (h11 style: frozen, named for what happened)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class TcpSession:
    """One app TCP connection, NATed onto the hairpin (peer:nat_port -> server:listen_port).

    `*_delta_*` are precomputed RFC 1624 checksum deltas so each packet of the flow is
    rewritten with two additions, never a full checksum. `ip_delta_*` covers the two
    addresses only: the IPv4 header checksum, and the partial (pseudo-header) transport
    sum of offloaded frames.
    """

    version: int
    client_addr: bytes
    client_port: int
    dst_addr: bytes
    dst_port: int
    nat_port: int
    state: int
    deadline: float
    l4_delta_out: int = 0
    l4_delta_in: int = 0
    ip_delta_out: int = 0
    ip_delta_in: int = 0


@dataclass(eq=False, slots=True)
class UdpSession:
    """Full-cone UDP: one session per app source address and port, any destination."""

    version: int
    client_addr: bytes
    client_port: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """The app sent `payload` from `session`'s source to dst_addr:dst_port."""

    session: UdpSession
    dst_addr: bytes
    dst_port: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class UdpSessionExpired:
    """No datagram either way for the idle timeout: its association can be released."""

    session: UdpSession


@dataclass(frozen=True, slots=True)
class TcpSessionExpired:
    """The NAT entry is gone (never accepted, or lingered after close)."""

    session: TcpSession


StackEvent = UdpDatagram | UdpSessionExpired | TcpSessionExpired
