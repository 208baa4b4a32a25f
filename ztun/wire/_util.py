"""Small helpers shared by the reprs (validation of values before emitting)."""

from __future__ import annotations

from ztun.wire._types import WritableBuffer


def check_uint(name: str, value: int, bits: int) -> None:
    """Refuse a repr field that does not fit its wire field, with a message saying which."""
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value} does not fit in {bits} bits")


def check_room(what: str, buf: WritableBuffer, needed: int) -> None:
    """Refuse to emit into a buffer that is too small (instead of a struct.error)."""
    if len(buf) < needed:
        raise ValueError(f"{what}: buffer of {len(buf)} bytes, need {needed}")
