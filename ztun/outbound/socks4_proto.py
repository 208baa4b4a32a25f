"""SOCKS4 and SOCKS4a client protocol, sans-IO (after h11): bytes in, events out.

SOCKS4 (Ying-Da Lee, "SOCKS: A protocol for TCP proxy across firewalls") has one message
each way. The request is VN=4 CD=1 (CONNECT) DSTPORT(2) DSTIP(4) USERID NUL; the reply
is 8 bytes, VN=0 CD DSTPORT DSTIP, where CD 90 grants the request. SOCKS4 names IPv4
addresses only. The SOCKS4a extension (same author, "SOCKS 4A: A Simple Extension to SOCKS
4 Protocol") lets the proxy resolve a name: DSTIP is set to 0.0.0.x with x non-zero, and
the name follows the USERID's NUL, itself NUL-terminated.

`Socks4Client` queues its only request at construction, so the adapter (`socks4.py`)
writes it, feeds whatever comes back to `receive_data()` (down to one byte at a time;
b"" = the proxy closed) and reads one event: `Granted` or `RequestRejected`. Tunnel bytes
that arrived with the reply wait in `trailing_data`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .protocol import ClientCore, LocalProtocolError, RemoteProtocolError
from .target import Target, encode_domain

SOCKS4_VERSION = 0x04
CONNECT = 0x01
#: The reply's VN is 0 in the protocol; some servers echo 4. Both mean "a SOCKS4 reply".
REPLY_VERSIONS = (0x00, 0x04)
REPLY_LEN = 8
#: DSTIP 0.0.0.1: "invalid" IP the 4a extension uses to say "the name follows".
SOCKS4A_MARKER = bytes((0, 0, 0, 1))
_NUL = b"\x00"


class Reply(enum.IntEnum):
    GRANTED = 90
    REJECTED = 91
    IDENTD_UNREACHABLE = 92
    IDENTD_MISMATCH = 93


REPLY_NAMES: dict[int, str] = {
    Reply.GRANTED: "request granted",
    Reply.REJECTED: "request rejected or failed",
    Reply.IDENTD_UNREACHABLE: "rejected: the proxy cannot reach our identd",
    Reply.IDENTD_MISMATCH: "rejected: identd reports a different user id",
}


def reply_name(code: int) -> str:
    """The protocol's name for reply CD `code`, or "unassigned reply ..."."""
    return REPLY_NAMES.get(code, f"unassigned reply {code} ({code:#04x})")


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Granted:
    """CD 90: the tunnel is open. `bound` is the reply's DSTIP:DSTPORT (often 0.0.0.0:0)."""

    bound: Target


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """CD 91-93 (or an unassigned code); `reason` is its name."""

    reply_code: int

    @property
    def reason(self) -> str:
        return reply_name(self.reply_code)


Event = Granted | RequestRejected


class State(enum.Enum):
    AWAIT_REPLY = "awaiting the reply"
    ESTABLISHED = "established"
    FAILED = "failed"


class Socks4Client(ClientCore):
    """One SOCKS4 (or, with `socks4a=True`, SOCKS4a) CONNECT to `target`.

    Plain SOCKS4 carries only IPv4 targets: anything else raises LocalProtocolError at
    construction (the caller chose the wrong scheme, the proxy was never asked). SOCKS4a
    sends IPv4 addresses as SOCKS4 does and any other host - a name, or an IPv6 literal
    the proxy's resolver parses - after the 0.0.0.1 marker.
    """

    def __init__(self, target: Target, *, user_id: str = "", socks4a: bool = False) -> None:
        super().__init__(encode_request(target, user_id=user_id, socks4a=socks4a))
        self.state = State.AWAIT_REPLY

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the proxy (b"" = it closed); the reply's event once whole."""
        self._accept(data)
        if len(self._buf) < REPLY_LEN:
            return []
        version, code = self._buf[0], self._buf[1]
        if version not in REPLY_VERSIONS:
            self._fail()
            raise RemoteProtocolError(
                f"reply has version {version:#04x}, not 0x00 (is this a SOCKS4 proxy?)"
            )
        port = int.from_bytes(self._buf[2:4], "big")
        bound = Target.from_ip(bytes(self._buf[4:8]), port)
        del self._buf[:REPLY_LEN]
        if code == Reply.GRANTED:
            self.state = State.ESTABLISHED
            return [Granted(bound)]
        self.state = State.FAILED
        self._buf.clear()
        return [RequestRejected(code)]


def encode_request(target: Target, *, user_id: str = "", socks4a: bool = False) -> bytes:
    """VN CD DSTPORT DSTIP USERID NUL [HOST NUL]; LocalProtocolError if it cannot be said."""
    user = user_id.encode()
    if _NUL in user:
        raise LocalProtocolError("a SOCKS4 user id cannot contain a NUL byte")
    head = bytes((SOCKS4_VERSION, CONNECT)) + target.port.to_bytes(2, "big")
    ip = target.ip
    if ip is None and not socks4a:
        ip = target.seen_ip  # a sniffed name: the address the app itself connected to
    if ip is not None and ip.version == 4:
        return head + ip.packed + user + _NUL
    if not socks4a:
        what = "a name" if target.ip is None else "an IPv6 address"
        raise LocalProtocolError(
            f"socks4:// cannot carry {what} ({target}); use socks4a:// (the proxy resolves)"
        )
    try:
        host = encode_domain(target.host)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    return head + SOCKS4A_MARKER + user + _NUL + host + _NUL
