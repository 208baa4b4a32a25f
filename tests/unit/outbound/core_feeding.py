"""Feeding a handshake core as h11's tests do (`tests/helpers.py`): one byte at a time."""

from __future__ import annotations

from typing import Any

from ztun.outbound.protocol import HandshakeCore


def feed_bytewise(core: HandshakeCore, data: bytes) -> list[Any]:
    """Feed one byte at a time; nothing may happen before the final byte."""
    for i in range(len(data) - 1):
        assert list(core.receive_data(data[i : i + 1])) == [], f"event after byte {i}"
    return list(core.receive_data(data[-1:]))
