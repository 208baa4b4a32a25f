"""The control protocol's core: lines cut byte by byte, requests checked, every command
dispatched against a real flow table (LocalBackend), errors answered, never raised."""

from __future__ import annotations

import asyncio
import json

import pytest

from ztun.control.backends import LocalBackend
from ztun.control.handler import answer, flow_id
from ztun.control.protocol import (
    LineReader,
    ProtocolError,
    Request,
    parse_reply,
    parse_request,
)
from ztun.flows import FlowTable


def test_lines_come_out_only_when_whole() -> None:
    reader = LineReader()
    stream = b'{"cmd":"status"}\n{"cmd":"flows","proto":"udp"}\n'
    out: list[bytes] = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
        if i < stream.index(b"\n"):
            assert out == []
    assert out == [b'{"cmd":"status"}', b'{"cmd":"flows","proto":"udp"}']
    assert reader.pending == 0


def test_a_line_without_end_is_bounded() -> None:
    reader = LineReader(limit=16)
    reader.feed(b"x" * 16)
    with pytest.raises(ProtocolError, match="longer than 16"):
        reader.feed(b"y")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not a JSON object"),
        (b"[1,2]", "a request is a JSON object"),
        (b'{"cmd":"shutdown"}', "unknown cmd 'shutdown'"),
        (b"{}", "unknown cmd None"),
        (b"\xff", "not a JSON object"),
    ],
)
def test_bad_requests_are_named(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_request(line)


def test_request_round_trip() -> None:
    request = Request("flows", {"dst": "10.0.0.0/8", "domain": "ä.example"})
    line = request.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert parse_request(line[:-1]) == request


@pytest.mark.parametrize("value", [17, "17", "w1-17"])
def test_flow_ids(value: object) -> None:
    assert flow_id(value) in (17, "w1-17")


@pytest.mark.parametrize("value", [0, -1, True, "w-1", "x1-2", "w1-", None, 1.5])
def test_not_flow_ids(value: object) -> None:
    from ztun.control.handler import CommandFailed

    with pytest.raises(CommandFailed):
        flow_id(value)


class Meter:
    def __init__(self) -> None:
        self.bytes_up, self.bytes_down, self.half_closed = 1, 2, False


def a_backend() -> tuple[LocalBackend, FlowTable, list[str]]:
    table = FlowTable()
    reset: list[str] = []
    tcp = table.add(
        "tcp", ("10.0.0.2", 1), ("192.0.2.1", 80), 0.0, closer=lambda: reset.append("tcp")
    )
    table.routed(tcp, "proxy1", "a.example")
    table.connected(tcp, Meter(), 0.01)
    table.add("udp", ("10.0.0.2", 2), ("2001:db8::1", 53), 1.0)
    backend = LocalBackend(
        table,
        clock=lambda: 4.0,
        status_base=lambda: {"instance": {"device": "zt0"}, "counters": {"tcp_flows": 1}},
        reload=lambda args: {"message": "reloaded: nothing changed", "args": args},
    )
    return backend, table, reset


def ask(backend: LocalBackend, message: object) -> tuple[bool, object]:
    line = json.dumps(message).encode()
    return parse_reply(asyncio.run(answer(backend, line)))


def test_every_command_answers() -> None:
    backend, _table, reset = a_backend()
    ok, status = ask(backend, {"cmd": "status"})
    assert ok and status["instance"] == {"device": "zt0"}  # type: ignore[index]
    assert status["flows"]["active"] == {"tcp": 1, "udp": 1, "icmp": 0}  # type: ignore[index]
    assert [f["id"] for f in status["top_flows"]] == [1, 2]  # type: ignore[index]
    ok, flows = ask(backend, {"cmd": "flows", "proto": "udp"})
    assert ok and flows == [
        {
            "id": 2,
            "proto": "udp",
            "src": "10.0.0.2:2",
            "dst": "[2001:db8::1]:53",
            "domain": None,
            "outbound": None,
            "bytes_up": 0,
            "bytes_down": 0,
            "age_s": 3.0,
            "state": "connecting",
        }
    ]
    assert ask(backend, {"cmd": "close", "id": 1}) == (True, {"closed": 1})
    assert reset == ["tcp"]
    ok, reloaded = ask(backend, {"cmd": "reload", "text": "x"})
    assert ok and reloaded["args"] == {"text": "x"}  # type: ignore[index]
    ok, text = ask(backend, {"cmd": "metrics"})
    assert ok and 'ztun_flows_active{proto="tcp"} 1' in text  # type: ignore[operator]


def test_refusals_are_replies() -> None:
    backend, _table, _reset = a_backend()
    assert ask(backend, {"cmd": "close", "id": 99}) == (False, "no flow 99")
    assert ask(backend, {"cmd": "close", "id": 2}) == (False, "no flow 2")  # no closer yet
    assert ask(backend, {"cmd": "close"})[0] is False
    assert ask(backend, {"cmd": "flows", "dst": "x"})[1].startswith("dst 'x'")  # type: ignore[union-attr]
    assert ask(backend, {"cmd": "nope"}) == (
        False,
        "unknown cmd 'nope'; known: status, flows, close, reload, metrics",
    )


def test_a_bug_in_a_backend_is_answered_not_raised() -> None:
    backend, _table, _reset = a_backend()

    def broken(_args: dict) -> dict:
        raise KeyError("oops")

    backend._reload = broken
    ok, error = ask(backend, {"cmd": "reload"})
    assert not ok and error == "internal error: KeyError: 'oops'"
