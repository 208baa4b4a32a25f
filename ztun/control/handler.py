"""Requests to answers: the control protocol's dispatcher, free of I/O.

A `Backend` knows how to do each command for one ztun (an engine, or the parent of
`--workers N` asking each worker); `answer` turns one request line into one reply line
with it. Errors the user should read (no such flow, a refused reload) are
`CommandFailed`; anything else is a bug, answered as such without killing the server.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..flows import FlowFilter
from .protocol import ProtocolError, Request, failure, parse_request, reply

log = logging.getLogger("ztun")


class CommandFailed(Exception):
    """The command could not be done; the message is the reply's `error`."""


FlowId = int | str


class Backend(Protocol):
    async def status(self) -> dict[str, Any]: ...

    async def flows(self, flow_filter: FlowFilter) -> list[dict[str, Any]]: ...

    async def close(self, flow_id: FlowId) -> None: ...

    async def reload(self, args: dict[str, Any]) -> dict[str, Any]: ...

    async def metrics(self) -> str: ...


def flow_id(value: Any) -> FlowId:
    """A flow id as the request gives it: 17, "17", or "w1-17" with workers."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and int(text) > 0:
            return int(text)
        worker, sep, number = text.partition("-")
        if sep and worker[:1] == "w" and worker[1:].isdigit() and number.isdigit():
            return text
    raise CommandFailed(f"{value!r} is not a flow id (a number, or w<k>-<n> with workers)")


async def dispatch(backend: Backend, request: Request) -> Any:
    args = request.args
    if request.cmd == "status":
        return await backend.status()
    if request.cmd == "flows":
        try:
            flow_filter = FlowFilter.from_request(args)
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
        return await backend.flows(flow_filter)
    if request.cmd == "close":
        if "id" not in args:
            raise CommandFailed('close needs an id: {"cmd": "close", "id": 17}')
        await backend.close(flow_id(args["id"]))
        return {"closed": args["id"]}
    if request.cmd == "reload":
        return await backend.reload(args)
    if request.cmd == "metrics":
        return await backend.metrics()
    raise CommandFailed(f"unknown cmd {request.cmd!r}")  # parse_request lets none through


async def answer(backend: Backend, line: bytes) -> bytes:
    """One request line in, one reply line out."""
    try:
        request = parse_request(line)
    except ProtocolError as exc:
        return failure(str(exc))
    try:
        return reply(await dispatch(backend, request))
    except CommandFailed as exc:
        return failure(str(exc))
    except Exception as exc:  # a bug: say so, keep serving
        log.exception("control request %r failed", request.cmd)
        return failure(f"internal error: {type(exc).__name__}: {exc}")
