"""UDP sessions of the system stack: full-cone, one per app source, idle expiry."""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from .events import UdpSession

SessionKey = tuple[bytes, int]


class UdpSessionTable:
    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._sessions: dict[SessionKey, UdpSession] = {}
        # (deadline, key) pushed once per session; on pop the real deadline (last_seen +
        # timeout) is re-checked, so per-packet activity costs one float store.
        self._timers: list[tuple[float, SessionKey]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[UdpSession]:
        return iter(list(self._sessions.values()))

    def get_or_open(self, version: int, addr: bytes, port: int, now: float) -> UdpSession:
        key = (addr, port)
        session = self._sessions.get(key)
        if session is None:
            session = UdpSession(version=version, client_addr=addr, client_port=port, last_seen=now)
            self._sessions[key] = session
            heapq.heappush(self._timers, (now + self.idle_timeout, key))
        else:
            session.last_seen = now
        return session

    def holds(self, session: UdpSession) -> bool:
        """Whether `session` is still in the table (not expired or removed)."""
        return self._sessions.get((session.client_addr, session.client_port)) is session

    def touch(self, session: UdpSession, now: float) -> None:
        session.last_seen = now

    def expire(self, now: float) -> list[UdpSession]:
        expired: list[UdpSession] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, key = heapq.heappop(timers)
            session = self._sessions.get(key)
            if session is None:
                continue
            deadline = session.last_seen + self.idle_timeout
            if deadline > now:
                heapq.heappush(timers, (deadline, key))
                continue
            del self._sessions[key]
            expired.append(session)
        return expired
