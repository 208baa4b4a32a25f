"""The control socket: see and steer a running ztun (docs/control.md).

`protocol` (JSON lines, sans-IO) and `handler` (requests to replies) are the core;
`server` (Unix socket, worker channels) and `winpipe` (Windows named pipe) carry it;
`backends` answer for one engine or for the parent of workers; `client` and `commands`
are the `ztun status|flows|close|reload` side.
"""

from .client import Channel, ControlClient, ControlError, ControlUnreachable
from .handler import Backend, CommandFailed, answer
from .paths import Instance, control_path, discover
from .protocol import COMMANDS, LineReader, ProtocolError, Request
from .server import ControlServer, ControlSocketBusy

__all__ = [
    "COMMANDS",
    "Backend",
    "Channel",
    "CommandFailed",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "ControlSocketBusy",
    "ControlUnreachable",
    "Instance",
    "LineReader",
    "ProtocolError",
    "Request",
    "answer",
    "control_path",
    "discover",
]
