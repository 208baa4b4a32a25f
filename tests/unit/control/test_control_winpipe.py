"""The Windows named-pipe control endpoint, without Windows.

MOCK NOTICE: kernel32.dll and advapi32.dll cannot be loaded here, so `FakePipes` stands
in for them: it keeps pipe instances, blocks ConnectNamedPipe until a client connects,
hands ReadFile what the client wrote (in the chunks it wrote them) and accepts at most
WRITE_CHUNK bytes per WriteFile (as a full pipe buffer does), and sets the thread's last
error as Windows would. What is asserted is what Windows would see: the prototypes
(namedpipeapi.h, fileapi.h, handleapi.h, winbase.h, sddl.h), SECURITY_ATTRIBUTES'
layout (minwinbase.h, x64), the flags and SDDL each call gets, and the bytes each
client reads back -- the framing is the same sans-IO core as on Unix.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import queue
import threading
from typing import Any

import pytest

from tests.unit.tun.ctypes_fakes import fake_library
from ztun import win32
from ztun.control import winpipe as w
from ztun.control.backends import LocalBackend
from ztun.flows import FlowTable

PATH = "\\\\.\\pipe\\ztun-zt0"
WRITE_CHUNK = 4096


class Client:
    def __init__(self) -> None:
        self.to_server: queue.Queue[bytes | None] = queue.Queue()
        self.inbox = bytearray()
        self.cond = threading.Condition()

    def send(self, data: bytes) -> None:
        self.to_server.put(data)

    def close(self) -> None:
        self.to_server.put(None)

    def read_line(self, timeout: float = 10.0) -> bytes:
        with self.cond:
            assert self.cond.wait_for(lambda: b"\n" in self.inbox, timeout), bytes(self.inbox)
            end = self.inbox.index(b"\n") + 1
            line = bytes(self.inbox[:end])
            del self.inbox[:end]
            return line


class FakePipes:
    """kernel32 + advapi32, as far as the pipe server uses them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.local = threading.local()
        self.next_handle = 100
        self.waiting: queue.Queue[tuple[int, threading.Event]] = queue.Queue()
        self.clients: dict[int, Client] = {}
        self.instances: set[str] = set()
        self.lock = threading.Lock()

    def api(self) -> w.PipeApi:
        """The function tables, built from this fake as `PipeApi.load` builds them."""
        return w.PipeApi(
            fake_library(self, list(w.KERNEL32)),
            fake_library(self, list(w.ADVAPI32)),
            last_error=self.last_error,
        )

    def last_error(self) -> int:
        return getattr(self.local, "error", 0)

    # advapi32
    def ConvertStringSecurityDescriptorToSecurityDescriptorW(self, sddl, rev, out, size):  # type: ignore[no-untyped-def]
        self.calls.append(("sddl", sddl, rev))
        out._obj.value = 0x5000
        size._obj.value = 40
        return 1

    # kernel32
    def CreateNamedPipeW(self, name, open_mode, pipe_mode, instances, out, inn, timeout, sa):  # type: ignore[no-untyped-def]
        attrs = sa._obj
        self.calls.append(
            (
                "create",
                name,
                open_mode,
                pipe_mode,
                instances,
                out,
                inn,
                timeout,
                attrs.nLength,
                attrs.lpSecurityDescriptor,
                attrs.bInheritHandle,
            )
        )
        with self.lock:
            if open_mode & w.FILE_FLAG_FIRST_PIPE_INSTANCE and name in self.instances:
                self.local.error = w.ERROR_ACCESS_DENIED
                return w.INVALID_HANDLE_VALUE
            self.instances.add(name)
            self.next_handle += 1
            return self.next_handle

    def ConnectNamedPipe(self, handle, overlapped):  # type: ignore[no-untyped-def]
        connected = threading.Event()
        self.waiting.put((handle, connected))
        connected.wait(30)
        return 1

    def connect(self) -> Client:
        """A client opens the pipe: the instance waiting in ConnectNamedPipe gets it."""
        handle, connected = self.waiting.get(timeout=10)
        client = Client()
        self.clients[handle] = client
        connected.set()
        return client

    def CreateFileW(self, name, access, share, sa, disposition, flags, template):  # type: ignore[no-untyped-def]
        self.calls.append(("open", name, access, share, sa, disposition, flags, template))
        self.connect().close()
        return 9

    def ReadFile(self, handle, buffer, size, count, overlapped):  # type: ignore[no-untyped-def]
        data = self.clients[handle].to_server.get(timeout=30)
        if data is None:
            self.local.error = win32.ERROR_BROKEN_PIPE
            count._obj.value = 0
            return 0
        assert len(data) <= size
        ctypes.memmove(buffer, data, len(data))
        count._obj.value = len(data)
        return 1

    def WriteFile(self, handle, data, size, written, overlapped):  # type: ignore[no-untyped-def]
        assert size == len(data)
        client = self.clients[handle]
        taken = data[:WRITE_CHUNK]
        with client.cond:
            client.inbox += taken
            client.cond.notify_all()
        written._obj.value = len(taken)
        return 1

    def FlushFileBuffers(self, handle):  # type: ignore[no-untyped-def]
        return 1

    def DisconnectNamedPipe(self, handle):  # type: ignore[no-untyped-def]
        self.calls.append(("disconnect", handle))
        return 1

    def CloseHandle(self, handle):  # type: ignore[no-untyped-def]
        self.calls.append(("close", handle))
        return 1

    def LocalFree(self, pointer):  # type: ignore[no-untyped-def]
        self.calls.append(("free", pointer.value))
        return None


def test_prototypes_and_layout_match_the_headers() -> None:
    assert ctypes.sizeof(ctypes.c_void_p) == 8, "layouts below are x64's"
    assert ctypes.sizeof(w.SECURITY_ATTRIBUTES) == 24
    assert w.SECURITY_ATTRIBUTES.nLength.offset == 0
    assert w.SECURITY_ATTRIBUTES.lpSecurityDescriptor.offset == 8
    assert w.SECURITY_ATTRIBUTES.bInheritHandle.offset == 16
    restype, argtypes = w.KERNEL32["CreateNamedPipeW"]
    assert restype is ctypes.c_void_p and len(argtypes) == 8
    assert argtypes[0] is ctypes.c_wchar_p and all(a is ctypes.c_uint32 for a in argtypes[1:7])
    assert len(w.KERNEL32["ReadFile"][1]) == len(w.KERNEL32["WriteFile"][1]) == 5
    assert len(w.KERNEL32["CreateFileW"][1]) == 7
    assert len(w.ADVAPI32["ConvertStringSecurityDescriptorToSecurityDescriptorW"][1]) == 4
    # winbase.h values
    assert (w.PIPE_ACCESS_DUPLEX, w.FILE_FLAG_FIRST_PIPE_INSTANCE) == (3, 0x80000)
    assert (w.PIPE_REJECT_REMOTE_CLIENTS, w.PIPE_UNLIMITED_INSTANCES) == (8, 255)
    assert (w.GENERIC_READ | w.GENERIC_WRITE, w.OPEN_EXISTING) == (0xC0000000, 3)
    assert w.INVALID_HANDLE_VALUE == 2**64 - 1


class Meter:
    bytes_up, bytes_down, half_closed = 1, 2, False


def serve(fake: FakePipes, clients_side) -> Any:  # type: ignore[no-untyped-def]
    table = FlowTable()
    table.connected(table.add("tcp", ("10.0.0.2", 1), ("192.0.2.1", 80), 0.0), Meter())
    backend = LocalBackend(
        table,
        clock=lambda: 1.0,
        status_base=lambda: {"instance": {"device": "zt0"}, "counters": {}},
        reload=lambda args: {"message": "x" * 100_000},  # a reply longer than a write
    )

    async def main() -> Any:
        api = fake.api()
        server = w.PipeServer(PATH, backend, asyncio.get_running_loop(), api)
        server.start()
        try:
            return await asyncio.to_thread(clients_side)
        finally:
            await asyncio.to_thread(server.stop)

    return asyncio.run(main())


def test_pipe_is_made_private_and_local_and_frames_requests() -> None:
    fake = FakePipes()

    def clients() -> list[bytes]:
        one = fake.connect()
        one.send(b'{"cmd":"flows"}\n{"cmd":"clo')  # one request and a half
        first = one.read_line()
        one.send(b'se","id":7}\n')
        second = one.read_line()
        two = fake.connect()  # a second client while the first is connected
        two.send(b'{"cmd":"reload"}\n')
        third = two.read_line()
        one.close()
        two.close()
        return [first, second, third]

    first, second, third = serve(fake, clients)
    assert json.loads(first)["result"][0]["id"] == 1
    assert json.loads(second) == {"ok": False, "error": "no flow 7"}
    assert json.loads(third)["result"]["message"] == "x" * 100_000  # written in pieces
    creates = [c for c in fake.calls if c[0] == "create"]
    sddl = [c for c in fake.calls if c[0] == "sddl"]
    assert sddl == [("sddl", "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)", 1)]
    size = ctypes.sizeof(w.SECURITY_ATTRIBUTES)
    local_only = w.PIPE_TYPE_BYTE | w.PIPE_READMODE_BYTE | w.PIPE_WAIT | 8
    assert creates[0] == (
        "create",
        PATH,
        3 | 0x80000,
        local_only,
        255,
        65536,
        65536,
        0,
        size,
        0x5000,
        False,
    )
    # Later instances join the first: without the first-instance flag.
    assert all(c[2] == 3 for c in creates[1:]) and len(creates) >= 3
    assert ("free", 0x5000) in fake.calls  # the descriptor is freed on stop
    assert [c for c in fake.calls if c[0] == "open"] == [
        ("open", PATH, 0xC0000000, 0, None, 3, 0, None)
    ]


def test_a_taken_name_fails_at_start() -> None:
    fake = FakePipes()
    fake.instances.add(PATH)  # another process holds the pipe
    api = fake.api()
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(OSError, match="another process holds"):
            w.PipeServer(PATH, None, loop, api)  # type: ignore[arg-type]
    finally:
        loop.close()
