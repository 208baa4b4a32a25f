"""Errors raised by the packet layer.

Every error carries a short ``reason`` so the stack can count drops per cause
(``drops[err.reason] += 1``) without parsing messages.  The split between the two
subclasses follows one rule:

* :class:`Truncated` -- the buffer ends before a length the packet itself declares
  (or before a fixed-size header is complete).  A short read, a too-small snaplen.
* :class:`Malformed` -- a field holds a value that is impossible on its own
  (version 5, IHL 3, a TCP option of length 1, a broken IPv6 extension chain).

Both derive from ``ValueError`` so callers that only care about "bad input" can catch
that; nothing in ``ztun.wire`` lets ``IndexError`` or ``struct.error`` escape a checked
constructor.
"""

from __future__ import annotations

__all__ = ["Malformed", "Truncated", "WireError"]


class WireError(ValueError):
    """A packet could not be parsed; ``reason`` is a short counter key."""

    reason: str

    def __init__(self, reason: str, detail: str = "") -> None:
        # Both go into args so the exception pickles (xdist, multiprocessing) intact.
        super().__init__(reason, detail)
        self.reason = reason

    @property
    def detail(self) -> str:
        """Human-readable explanation (may be empty)."""
        detail: str = self.args[1]
        return detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class Truncated(WireError):
    """The buffer is shorter than the packet's headers or declared length."""

    def __init__(self, reason: str = "truncated", detail: str = "") -> None:
        super().__init__(reason, detail)


class Malformed(WireError):
    """A header field holds an impossible value."""
