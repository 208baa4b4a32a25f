"""sd_notify received on real datagram sockets the test binds (a path and an abstract
name), and the pid file's life."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from ztun import service
from ztun.service import PidFile, PidFileBusy, notify_address


def datagram_socket(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def test_ready_reloading_stopping_arrive_as_datagrams(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "notify")
    with datagram_socket(path) as sock:
        env = {"NOTIFY_SOCKET": path}
        os.environ["NOTIFY_SOCKET"] = path
        try:
            assert service.ready("serving zt0")
            ready = sock.recv(4096).decode().split("\n")
            assert service.reloading()
            reloading = sock.recv(4096).decode().split("\n")
            assert service.stopping()
            stopping = sock.recv(4096).decode()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        assert service.notify("X=1", env=env)
        assert sock.recv(4096) == b"X=1"
    assert ready == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=serving zt0"]
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].partition("=")[2]) > 0
    assert stopping == "STOPPING=1"


def test_abstract_namespace_name() -> None:
    name = f"ztun-test-{os.getpid()}"
    assert notify_address({"NOTIFY_SOCKET": f"@{name}"}) == b"\0" + name.encode()
    with datagram_socket(b"\0" + name.encode()) as sock:
        assert service.notify("READY=1", env={"NOTIFY_SOCKET": f"@{name}"})
        assert sock.recv(4096) == b"READY=1"


def test_no_notify_socket_is_a_quiet_no_op(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert notify_address({}) is None
    assert not service.notify("READY=1", env={})
    assert not service.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"})
    # Nobody listening: a warning, never an exception.
    assert not service.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "none")})


def test_pid_file_written_replaced_when_stale_and_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run" / "ztun.pid"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    path.parent.mkdir()
    path.write_text(dead.stdout)  # a pid that has exited: stale
    pid_file = PidFile(path)
    pid_file.write()
    assert path.read_text() == f"{os.getpid()}\n"
    pid_file.remove()
    assert not path.exists()


def test_pid_file_of_a_live_process_is_not_taken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ztun.pid"
    path.write_text(f"{os.getppid()}\n")  # our parent: alive
    with pytest.raises(PidFileBusy, match=str(os.getppid())):
        PidFile(path).write()
    other = PidFile(path)
    other.remove()  # never written by us: left alone
    assert path.exists()
