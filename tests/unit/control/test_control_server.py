"""The control server on real Unix sockets and socketpairs: mode 0600, stale files
replaced, live ones respected, several requests per connection, and the parent of
workers answering for two real LocalBackends over their channels."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ztun.control import ControlClient, ControlError, ControlServer, ControlSocketBusy
from ztun.control.backends import LocalBackend, WorkersBackend
from ztun.control.client import Channel
from ztun.control.protocol import MAX_REQUEST
from ztun.control.server import bind_unix, remove_if_stale
from ztun.flows import FlowTable


class Meter:
    def __init__(self, up: int, down: int) -> None:
        self.bytes_up, self.bytes_down, self.half_closed = up, down, False


def engine_like(index: int, closed: list[str]) -> LocalBackend:
    """One worker's backend: a table with one TCP flow moving index-dependent bytes."""
    table = FlowTable()
    record = table.add(
        "tcp",
        ("10.0.0.2", 1000 + index),
        ("192.0.2.1", 80),
        0.0,
        closer=lambda: closed.append(f"w{index}"),
    )
    table.routed(record, "proxy1")
    table.connected(record, Meter(10 * (index + 1), 1000 * (index + 1)), 0.002)
    return LocalBackend(
        table,
        clock=lambda: 2.0,
        status_base=lambda: {
            "instance": {"device": "zt0", "pid": 100 + index},
            # Worker 0 saw proxy1 fail twice, worker 1 has it up again.
            "proxies": [
                {
                    "name": "proxy1",
                    "up": index == 1,
                    "active": 1,
                    "failures": 0 if index else 2,
                    "last_error": "timed out",
                    "rtt_ms": 2.5 if index else None,
                }
            ],
            "groups": {
                "default": {
                    "policy": "failover",
                    "members": ["proxy1"],
                    "active": "proxy1" if index else None,
                }
            },
            "counters": {"tcp_flows": 1, "stack": {"malformed_truncated": index}},
        },
        reload=lambda args: {"message": f"worker {index}"},
    )


def run_with_server(path: str, backend: Any, client_side: Callable[[], Any]) -> Any:
    async def main() -> Any:
        server = ControlServer(backend)
        await server.listen(path)
        try:
            return await asyncio.to_thread(client_side)
        finally:
            server.close()

    return asyncio.run(main())


def test_socket_is_0600_and_answers_many_requests_per_connection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "run" / "zt0.sock")
    closed: list[str] = []

    def client() -> tuple[Any, ...]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with ControlClient(path) as c:
            status = c.call("status")
            flows = c.call("flows", proto="tcp")
            with pytest.raises(ControlError, match="no flow 5"):
                c.call("close", id=5)
            closing = c.call("close", id=1)
            return mode, status, flows, closing

    mode, status, flows, closing = run_with_server(path, engine_like(0, closed), client)
    assert mode == 0o600
    assert status["flows"]["active"]["tcp"] == 1
    assert [f["id"] for f in flows] == [1]
    assert closing == {"closed": 1} and closed == ["w0"]
    assert not os.path.exists(path), "the server removes its socket when it closes"


def test_bad_lines_get_an_error_and_the_connection_goes_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "zt0.sock")

    def client() -> list[bytes]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b'garbage\n{"cmd":"status"}\n')
            reader = sock.makefile("rb")
            first, second = reader.readline(), reader.readline()
            sock.sendall(b"x" * (MAX_REQUEST + 2))  # no newline, ever
            third = reader.readline()
            return [first, second[:11], third, reader.read()]

    first, second, third, rest = run_with_server(path, engine_like(0, []), client)
    assert first.startswith(b'{"ok":false,"error":"not a JSON object')
    assert second == b'{"ok":true,'
    assert b"longer than" in third and rest == b"", "an endless line ends the connection"


def test_a_stale_socket_file_is_replaced_a_live_one_is_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "zt0.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound, never listening, closed: what a SIGKILLed ztun leaves
    stale.close()
    live = bind_unix(path)
    try:
        with pytest.raises(ControlSocketBusy, match="another ztun answers"):
            bind_unix(path)
    finally:
        live.close()
    listening = bind_unix(path)  # what `ztun cleanup` asks of every socket file
    try:
        assert not remove_if_stale(path) and os.path.exists(path)
    finally:
        listening.close()
    assert remove_if_stale(path) and not os.path.exists(path)
    (tmp_path / "file.sock").write_text("not a socket")
    with pytest.raises(ControlSocketBusy, match="not a socket"):
        bind_unix(str(tmp_path / "file.sock"))


def test_close_leaves_a_successors_socket_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "zt0.sock")

    async def main() -> bool:
        first = ControlServer(engine_like(0, []))
        await first.listen(path)
        os.unlink(path)  # someone removed it and a successor bound the same path
        successor = bind_unix(path)
        try:
            first.close()
            return os.path.exists(path)
        finally:
            successor.close()

    assert asyncio.run(main())


def over_channels(
    backends: list[LocalBackend], body: Callable[[WorkersBackend], Awaitable[Any]]
) -> Any:
    """Workers' backends served on socketpairs, as each worker serves its parent."""

    async def main() -> Any:
        channels, servers = [], []
        for backend in backends:
            parent_end, worker_end = socket.socketpair()
            server = ControlServer(backend)
            server.serve_channel(worker_end)
            servers.append(server)
            channels.append(await Channel.over(parent_end))
        parent = WorkersBackend(
            channels,
            status_base=lambda: {"instance": {"device": "zt0", "workers": 2}},
            reload=lambda args: {"message": "parent"},
        )
        try:
            return await body(parent)
        finally:
            for channel in channels:
                channel.close()
            for server in servers:
                server.close()

    return asyncio.run(main())


def test_the_parent_merges_its_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    closed: list[str] = []
    backends = [engine_like(0, closed), engine_like(1, closed)]

    async def body(parent: WorkersBackend) -> tuple[Any, ...]:
        from ztun.flows import FlowFilter

        status = await parent.status()
        flows = await parent.flows(FlowFilter())
        await parent.close("w1-1")
        text = await parent.metrics()
        return status, flows, text

    status, flows, text = over_channels(backends, body)
    assert status["instance"] == {"device": "zt0", "workers": 2}
    assert status["counters"] == {"tcp_flows": 2, "stack": {"malformed_truncated": 1}}
    assert status["flows"]["active"]["tcp"] == 2
    assert {"proto": "tcp", "direction": "down", "bytes": 3000} in status["flows"]["bytes"]
    # A proxy is shown as the worker that has it up sees it, its open flows summed.
    assert status["proxies"] == [
        {
            "name": "proxy1",
            "up": True,
            "active": 2,
            "failures": 0,
            "last_error": "timed out",
            "rtt_ms": 2.5,
        }
    ]
    assert status["groups"] == {
        "default": {"policy": "failover", "members": ["proxy1"], "active": "proxy1"}
    }
    assert [f["id"] for f in status["top_flows"]] == ["w1-1", "w0-1"]  # busiest first
    assert sorted(f["id"] for f in flows) == ["w0-1", "w1-1"]
    assert closed == ["w1"]
    assert 'ztun_flows_total{proto="tcp",outbound="proxy1"} 2' in text
    assert 'ztun_proxy_flows_active{proxy="proxy1"} 2' in text
    assert 'ztun_group_member_active{group="default",proxy="proxy1"} 1' in text


@pytest.mark.parametrize("flow", ["w2-1", "w0-9", "7"])
def test_the_parent_refuses_ids_no_worker_has(flow: str) -> None:
    from ztun.control.handler import CommandFailed

    async def body(parent: WorkersBackend) -> str:
        with pytest.raises(CommandFailed) as exc:
            await parent.close(flow)
        return str(exc.value)

    assert flow in over_channels([engine_like(0, []), engine_like(1, [])], body)
