"""What one engine is within `ztun run`: the only one, or worker k of N (`--workers`)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class WorkerRole:
    """Worker `index` of `count` (1: the only one)."""

    index: int = 0
    count: int = 1
    redirect_listeners: list[socket.socket] | None = None
    on_ready: Callable[[], None] | None = None
    # A worker's end of the socketpair its parent answers `ztun status` etc. through.
    control_channel: socket.socket | None = None

    @property
    def alone(self) -> bool:
        """A single engine does what the parent does for workers (nftables redirect)."""
        return self.count == 1

    @property
    def primary(self) -> bool:
        """Worker 0 holds process-wide state: the fake-IP pool and its state file."""
        return self.index == 0

    @property
    def nat_shard(self) -> tuple[int, int]:
        return self.index, self.count
