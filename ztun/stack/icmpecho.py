"""ICMP echo policy, sans-IO: answer pings locally, refuse them, or forward them for real.

* `local` (the default, as in sing-box and hev-socks5-tunnel): the stack answers every
  echo request itself. Cheap, and a SOCKS5 proxy cannot carry ICMP anyway -- but an
  app then sees a healthy network where there may be none.
* `reject`: every echo request gets ICMP destination unreachable, "communication
  administratively prohibited" (RFC 1812 sec. 5.2.7.1, type 3 code 13; RFC 4443 sec. 3.1,
  type 1 code 1): honest, and fast to fail.
* `direct`: the request becomes an `IcmpEchoRequest` event; the engine sends it from
  ztun's host through an unprivileged ICMP socket (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6) and
  answers the app only with the echo replies the network sent, carrying the app's
  identifier and sequence number. The kernel gives each ICMP socket an identifier of its
  own (the socket's "port") and hands it only the replies that carry it, so each app echo
  session (source address and identifier) gets a socket: `EchoSessions` keeps them,
  bounded in number and by idle time.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass

from ..wire import build_icmp_echo, build_icmp_unreachable

__all__ = ["EchoSession", "EchoSessions", "IcmpEchoRequest", "IcmpMode", "prohibited"]

ECHO_IDLE_TIMEOUT = 30.0  # seconds without a request before an echo session's socket goes
MAX_ECHO_SESSIONS = 256  # sockets held for forwarded pings; one more closes the oldest

#: Destination unreachable, communication administratively prohibited.
_PROHIBITED_V4 = 13  # RFC 1812 sec. 5.2.7.1
_PROHIBITED_V6 = 1  # RFC 4443 sec. 3.1


class IcmpMode(enum.Enum):
    LOCAL = "local"
    DIRECT = "direct"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class IcmpEchoRequest:
    """The app `src` pinged `dst` (forward it: `--icmp direct`)."""

    version: int
    src: bytes
    dst: bytes
    ident: int
    seq: int
    payload: bytes  # the echo data, after the 8-byte header


def prohibited(original: bytes | bytearray | memoryview, src: bytes) -> bytearray:
    """ICMP unreachable, administratively prohibited, about `original`, sent from `src`."""
    code = _PROHIBITED_V4 if len(src) == 4 else _PROHIBITED_V6
    return build_icmp_unreachable(original, src, code=code)


@dataclass(eq=False, slots=True)
class EchoSession:
    """One app's pings (its source address and identifier) through one ICMP socket."""

    version: int
    app: bytes
    ident: int
    last_used: float


class EchoSessions:
    """Which echo session a request belongs to, and the reply packet to write back."""

    def __init__(
        self,
        counters: Counter[str],
        *,
        idle_timeout: float = ECHO_IDLE_TIMEOUT,
        max_sessions: int = MAX_ECHO_SESSIONS,
    ) -> None:
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[tuple[bytes, int], EchoSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def request(
        self, request: IcmpEchoRequest, now: float
    ) -> tuple[EchoSession, list[EchoSession]]:
        """The session `request` goes through, and sessions closed to make room for it
        (the adapter closes their sockets; a new session needs one opened)."""
        key = (request.src, request.ident)
        session = self._sessions.get(key)
        closed: list[EchoSession] = []
        if session is None:
            while len(self._sessions) >= self.max_sessions:
                _, oldest = self._sessions.popitem(last=False)
                self.counters["icmp_echo_sessions_evicted"] += 1
                closed.append(oldest)
            session = EchoSession(request.version, request.src, request.ident, now)
            self._sessions[key] = session
            self.counters["icmp_echo_sessions"] += 1
        else:
            session.last_used = now
            self._sessions.move_to_end(key)
        self.counters["icmp_echo_forwarded"] += 1
        return session, closed

    def reply(self, session: EchoSession, source: bytes, seq: int, payload: bytes) -> bytearray:
        """The echo reply the network sent from `source`, as the app must see it: to the
        app's address, with the app's identifier and the sequence number it carried."""
        self.counters["icmp_echo_replies"] += 1
        return build_icmp_echo(source, session.app, session.ident, seq, payload, reply=True)

    def forget(self, session: EchoSession) -> None:
        """The adapter lost the session's socket (an error): a later request opens anew."""
        key = (session.app, session.ident)
        if self._sessions.get(key) is session:
            del self._sessions[key]

    def expire(self, now: float) -> list[EchoSession]:
        """Sessions idle for the timeout (oldest first); their sockets can go."""
        expired: list[EchoSession] = []
        sessions = self._sessions
        while sessions:
            key, session = next(iter(sessions.items()))
            if session.last_used + self.idle_timeout > now:
                break
            del sessions[key]
            expired.append(session)
        return expired
