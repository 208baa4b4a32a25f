"""What every sans-IO proxy handshake core shares (SOCKS5, SOCKS4/4a, HTTP CONNECT).

A core is driven the same way whichever protocol it speaks (after h11): the adapter writes
`data_to_send()`, feeds whatever the proxy sent to `receive_data()` (b"" = the proxy
closed), and reads the events it returns; once the handshake is done, bytes that arrived
after the final reply belong to the tunnel and wait in `trailing_data`. That shared shape
is `HandshakeCore`, which `dialer.ProxyDialer` drives for every outbound; `ClientCore` is
the bookkeeping behind it (the queue, the buffer, feeding after the end, EOF).

Remote garbage raises `RemoteProtocolError`; using a core out of order raises
`LocalProtocolError`. A proxy saying "no" is not garbage: it is an event.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol


class ProtocolError(Exception):
    """Base of the two ways a proxy handshake can go wrong."""


class LocalProtocolError(ProtocolError):
    """We used the state machine wrongly (fed it after the handshake, bad credentials)."""


class RemoteProtocolError(ProtocolError):
    """The proxy sent bytes its protocol does not allow, or closed mid-message."""


class HandshakeCore(Protocol):
    """One client-side handshake, bytes in and events out (no sockets, no clock)."""

    def data_to_send(self) -> bytes:
        """What to write to the proxy now (possibly b""); the queue is emptied."""
        ...

    def receive_data(self, data: bytes) -> Sequence[object]:
        """Feed bytes from the proxy (b"" = it closed); return the events now complete."""
        ...

    @property
    def trailing_data(self) -> bytes:
        """Tunnel bytes that came with the final reply (after success only)."""
        ...


class ClientCore:
    """What every client core keeps: the bytes to send, what the proxy sent that is not
    parsed yet, and a `state` whose enum has ESTABLISHED and FAILED members (the ends)."""

    state: enum.Enum

    def __init__(self, first_message: bytes) -> None:
        self._out = bytearray(first_message)
        self._buf = bytearray()

    def data_to_send(self) -> bytes:
        """What to write to the proxy now (possibly b""); the queue is emptied."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def done(self) -> bool:
        return self.state.name in ("ESTABLISHED", "FAILED")

    @property
    def trailing_data(self) -> bytes:
        """Tunnel bytes that arrived together with the final reply (ESTABLISHED only)."""
        if self.state.name != "ESTABLISHED":
            raise LocalProtocolError(f"no trailing data while {self.state.value}")
        return bytes(self._buf)

    def _accept(self, data: bytes) -> None:
        """Buffer `data` for `receive_data`; misuse and EOF raise."""
        if self.done:
            raise LocalProtocolError(
                f"handshake {self.state.value}: relay tunnel bytes directly, not through "
                "the protocol core"
            )
        if not data:
            waiting = self.state.value
            self._fail()
            raise RemoteProtocolError(f"proxy closed the connection while {waiting}")
        self._buf += data

    def _fail(self) -> None:
        self.state = type(self.state)["FAILED"]
