"""`ztun status|flows|close|reload` as a user runs them: finding the instance (none: 1,
several: 2 with a list), the text and JSON they print, against real Unix sockets."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztun.cli import build_parser
from ztun.control import ControlServer
from ztun.control.backends import LocalBackend
from ztun.control.commands import NoInstance, cmd_control, find_instance, format_flows
from ztun.control.paths import Instance, control_path, discover, netns_tag
from ztun.flows import FlowTable
from ztun.platform import for_os


class Meter:
    def __init__(self) -> None:
        self.bytes_up, self.bytes_down, self.half_closed = 2048, 3 << 20, False


def test_discovery_sees_this_namespaces_sockets_only(tmp_path: Path) -> None:
    tag = netns_tag()
    other = "@1" if tag != "@1" else "@2"
    for name in (f"zt0{tag}.sock", f"zt1{tag}.sock", f"zt9{other}.sock", "notes.txt"):
        (tmp_path / name).write_text("")
    found = discover(directory=tmp_path)
    assert [i.device for i in found] == ["zt0", "zt1"]
    assert control_path("zt0", directory=tmp_path) == str(tmp_path / f"zt0{tag}.sock")
    assert control_path("zt0", for_os("win32")) == "\\\\.\\pipe\\ztun-zt0"
    assert control_path("zt0", for_os("darwin")) == "/var/run/ztun/zt0.sock"


def listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_which_instance(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "old.sock"))  # a killed ztun's: nobody answers
    stale.close()
    one, two = listening(tmp_path / "zt0.sock"), listening(tmp_path / "zt1.sock")
    try:
        everyone = [
            Instance("old", str(tmp_path / "old.sock")),
            Instance("zt0", str(tmp_path / "zt0.sock")),
            Instance("zt1", str(tmp_path / "zt1.sock")),
        ]
        with pytest.raises(NoInstance) as several:
            find_instance(None, None, everyone)
        assert several.value.code == 2
        assert "zt0" in str(several.value) and "zt1" in str(several.value)
        assert "old" not in str(several.value)
        assert find_instance(None, None, everyone[:2]) == str(tmp_path / "zt0.sock")
        with pytest.raises(NoInstance) as none:
            find_instance(None, None, everyone[:1])
        assert none.value.code == 1
        assert find_instance(None, "/x.sock", everyone) == "/x.sock"
        assert find_instance("tun://zt7", None, everyone) == control_path("zt7")
    finally:
        one.close()
        two.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """A real control server on its own loop thread, with two flows in its table."""
    table = FlowTable()
    closed: list[int] = []
    for n, (dst, domain) in enumerate(
        ((("192.0.2.1", 443), "www.example.com"), (("2001:db8::1", 53), None)), start=1
    ):
        record = table.add(
            "tcp" if domain else "udp",
            ("10.0.0.2", n),
            dst,
            0.0,
            domain=domain,
            closer=lambda n=n: closed.append(n),
        )
        table.routed(record, "proxy1")
        table.connected(record, Meter())
    backend = LocalBackend(
        table,
        clock=lambda: 75.0,
        status_base=lambda: {
            "instance": {
                "device": "zt0",
                "pid": 42,
                "version": "0.1.0",
                "platform": "linux",
                "workers": 1,
                "uptime_s": 3725.0,
                "started": 0.0,
                "control": "/run/ztun/zt0.sock",
            },
            "accelerations": {"splice": True, "vnet_hdr": False},
            "proxies": [
                {"name": "proxy1", "up": True, "rtt_ms": 3.2, "active": 2, "failures": 0},
                {
                    "name": "proxy2",
                    "up": False,
                    "last_error": "connect to 10.0.0.3:1080: Connection refused",
                    "rtt_ms": None,
                    "active": 0,
                    "failures": 3,
                },
            ],
            "groups": {
                "default": {
                    "policy": "failover",
                    "members": ["proxy2", "proxy1"],
                    "active": "proxy1",
                },
                "spare": {"policy": "round-robin", "members": ["proxy2"], "active": None},
            },
            "counters": {"stack": {"ipv4_fragment": 2}},
        },
        reload=lambda args: {"message": "reloaded, changed: rules"},
    )
    path = str(tmp_path / "zt0.sock")
    loop = asyncio.new_event_loop()
    server = ControlServer(backend)
    loop.run_until_complete(server.listen(path))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield path, closed
    asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def run(path: str, *argv: str) -> tuple[int, str]:
    ns = build_parser().parse_args([*argv, "--control", path])
    out = io.StringIO()
    return cmd_control(ns, out), out.getvalue()


def test_flows_json_and_filters(served: tuple[str, list[int]]) -> None:
    path, _ = served
    code, text = run(path, "flows", "--json")
    flows = json.loads(text)
    assert code == 0 and [f["id"] for f in flows] == [1, 2]
    assert set(flows[0]) >= {
        "id",
        "proto",
        "src",
        "dst",
        "domain",
        "outbound",
        "bytes_up",
        "bytes_down",
        "age_s",
        "state",
    }
    assert json.loads(run(path, "flows", "--json", "--proto", "udp")[1])[0]["id"] == 2
    assert json.loads(run(path, "flows", "--json", "--dst", "2001:db8::/32")[1])[0]["id"] == 2
    assert json.loads(run(path, "flows", "--json", "--domain", "example.com")[1])[0]["id"] == 1
    code, table = run(path, "flows")
    assert table.splitlines()[0].split() == [
        "ID",
        "PROTO",
        "SRC",
        "DST",
        "DOMAIN",
        "OUTBOUND",
        "UP",
        "DOWN",
        "AGE",
        "STATE",
    ]
    assert "www.example.com" in table and "3.0 MiB" in table and "1m15s" in table


def test_status_close_and_reload(served: tuple[str, list[int]]) -> None:
    path, closed = served
    code, text = run(path, "status")
    assert code == 0
    assert text.startswith("ztun 0.1.0 on zt0 (pid 42, linux, 1 worker), up 1h02m")
    assert "accelerations: splice=on vnet_hdr=off" in text
    assert "proxy proxy1: up, rtt 3.2 ms, 2 open" in text.splitlines()
    assert (
        "proxy proxy2: DOWN (connect to 10.0.0.3:1080: Connection refused), "
        "3 failures in a row, 0 open"
    ) in text.splitlines()
    assert "group default: failover over proxy2, proxy1; new flows go to proxy1" in text
    assert "group spare: round-robin over proxy2; no member is up" in text
    assert "dropped: ipv4_fragment 2" in text and "busiest flows:" in text
    status = json.loads(run(path, "status", "--json")[1])
    assert status["flows"]["active"] == {"tcp": 1, "udp": 1, "icmp": 0}
    code, watched = run(path, "status", "--watch", "--count", "2", "--interval", "0.1")
    assert code == 0 and watched.count("\x1b[H\x1b[2J") == 2
    assert run(path, "close", "2") == (0, "closed flow 2\n") and closed == [2]
    assert run(path, "close", "9")[0] == 1
    assert run(path, "reload") == (0, "reloaded, changed: rules\n")


def test_nobody_there_exits_1(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "none.sock")
    code, _ = run(path, "status")
    # The path and why, not the OSError's "[Errno 2] PATH: ..." repr.
    assert (code, capsys.readouterr().err) == (
        1,
        f"ztun status: no ztun answers at {path}: No such file or directory\n",
    )


def test_a_reader_that_goes_away_ends_watch_quietly(served: tuple[str, list[int]]) -> None:
    """`ztun status --watch | head -1`: the pipe closes under the redraw loop; ztun stops
    without a BrokenPipeError traceback (a real pipe and a real ztun process)."""
    path, _ = served
    argv = [sys.executable, "-m", "ztun", "status", "--watch", "--interval", "0.1"]
    with subprocess.Popen(
        [*argv, "--control", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline().startswith(b"\x1b[H\x1b[2Jztun 0.1.0 on zt0")
        child.stdout.close()  # as head does after its line
        stderr = child.stderr.read().decode()
        assert child.wait(timeout=30) == 1, stderr
    assert stderr == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flows", "--dst", "BAD"], "argument --dst: dst 'BAD' is not a CIDR"),
        (["flows", "--dst", "10.0.0.300/8"], "argument --dst:"),
        (["close", "abc"], "argument FLOW_ID: 'abc' is not a flow id"),
        (["close", "0"], "argument FLOW_ID: '0' is not a flow id"),
        (["close", "w1-"], "argument FLOW_ID:"),
    ],
)
def test_malformed_arguments_exit_2_before_any_instance_is_asked(
    argv: list[str], message: str, served: tuple[str, list[int]], capsys
) -> None:  # type: ignore[no-untyped-def]
    """A typo is the user's to fix (exit 2, docs/control.md), not the instance's refusal
    (exit 1); the parser decides, so the served instance is never asked to close."""
    path, closed = served
    with pytest.raises(SystemExit) as exc:
        run(path, *argv)
    assert exc.value.code == 2 and closed == []
    assert message in capsys.readouterr().err
    assert run(path, "close", "w0-2")[0] == 1  # well-formed, and no worker 0 here: refused


def test_format_flows_empty() -> None:
    assert format_flows([]) == "no open flows\n"


def test_netns_tag_from_pid_1_else_from_the_named_namespaces(tmp_path: Path) -> None:
    """Inodes stand in for namespaces: files of a fake /proc and /run/netns."""
    proc, named = tmp_path / "proc", tmp_path / "netns"
    for d in (proc / "self" / "ns", proc / "1" / "ns", named):
        d.mkdir(parents=True)
    ours = proc / "self" / "ns" / "net"
    ours.write_text("")
    inode = os.stat(ours).st_ino
    (proc / "1" / "ns" / "net").write_text("")  # another inode: PID 1 is elsewhere
    assert netns_tag(proc, named) == f"@{inode}"
    (proc / "1" / "ns" / "net").unlink()
    os.link(ours, proc / "1" / "ns" / "net")  # PID 1's namespace is ours
    assert netns_tag(proc, named) == ""
    (proc / "1" / "ns" / "net").unlink()  # unreadable PID 1: the named ones decide
    assert netns_tag(proc, named) == ""
    os.link(ours, named / "client")
    assert netns_tag(proc, named) == f"@{inode}"
