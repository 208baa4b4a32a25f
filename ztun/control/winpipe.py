"""The control endpoint on Windows: a named pipe only its owner and administrators open.

MOCK NOTICE: kernel32.dll and advapi32.dll are loaded only on Windows
(:meth:`PipeApi.load`); the tests build the same function tables from fakes exposing
the same names, so the prototypes (as declared in namedpipeapi.h, fileapi.h,
handleapi.h, winbase.h and sddl.h), the flags and the server's framing are checked
without Windows.

Why not asyncio's pipe server (`ProactorEventLoop.start_serving_pipe`): it creates every
instance with a NULL security descriptor, whose default DACL lets Everyone open the pipe
for reading. This one is the Windows twin of the Unix socket's mode 0600:

- the DACL is `D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)`: protected (no inherited entries),
  full access for LocalSystem, the Administrators group and the owner, nobody else;
- `FILE_FLAG_FIRST_PIPE_INSTANCE` on the first instance: if the name is already taken
  (another ztun, or a process squatting it to read our clients' requests) creating it
  fails with ERROR_ACCESS_DENIED instead of silently joining that pipe;
- `PIPE_REJECT_REMOTE_CLIENTS`: the pipe is local only, never reachable over SMB.

The server is blocking calls in threads: one accepts (CreateNamedPipeW, then
ConnectNamedPipe), one per client reads requests and writes replies; each request is
answered on the event loop (`run_coroutine_threadsafe`), so the backend is only ever
touched from the loop's thread, as on Unix. `stop` unblocks the accepting thread by
connecting to the pipe itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import Callable
from ctypes import POINTER, byref, c_void_p
from typing import Any

from ..win32 import (
    BOOL,
    DWORD,
    ERROR_ACCESS_DENIED,
    ERROR_PIPE_CONNECTED,
    HANDLE,
    LPCWSTR,
    Prototype,
    bind,
    last_error,
    windll,
)
from .handler import Backend, answer
from .protocol import LineReader, ProtocolError, failure

log = logging.getLogger("ztun")

# winbase.h / namedpipeapi.h
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_TYPE_BYTE = 0x00000000
PIPE_READMODE_BYTE = 0x00000000
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
PIPE_UNLIMITED_INSTANCES = 255
# fileapi.h / winnt.h
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
OPEN_EXISTING = 3
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
# sddl.h
SDDL_REVISION_1 = 1
PIPE_SDDL = "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)"
BUFFER_SIZE = 65536


class SECURITY_ATTRIBUTES(ctypes.Structure):
    """minwinbase.h: DWORD nLength; LPVOID lpSecurityDescriptor; BOOL bInheritHandle
    (x64: offsets 0, 8, 16; 24 bytes)."""

    _fields_ = [
        ("nLength", DWORD),
        ("lpSecurityDescriptor", c_void_p),
        ("bInheritHandle", BOOL),
    ]


KERNEL32: dict[str, Prototype] = {
    # HANDLE CreateNamedPipeW(LPCWSTR lpName, DWORD dwOpenMode, DWORD dwPipeMode,
    #   DWORD nMaxInstances, DWORD nOutBufferSize, DWORD nInBufferSize,
    #   DWORD nDefaultTimeOut, LPSECURITY_ATTRIBUTES lpSecurityAttributes)
    "CreateNamedPipeW": (
        HANDLE,
        [LPCWSTR, DWORD, DWORD, DWORD, DWORD, DWORD, DWORD, POINTER(SECURITY_ATTRIBUTES)],
    ),
    # BOOL ConnectNamedPipe(HANDLE hNamedPipe, LPOVERLAPPED lpOverlapped)
    "ConnectNamedPipe": (BOOL, [HANDLE, c_void_p]),
    "DisconnectNamedPipe": (BOOL, [HANDLE]),
    # BOOL ReadFile(HANDLE, LPVOID, DWORD nNumberOfBytesToRead, LPDWORD, LPOVERLAPPED)
    "ReadFile": (BOOL, [HANDLE, c_void_p, DWORD, POINTER(DWORD), c_void_p]),
    # BOOL WriteFile(HANDLE, LPCVOID, DWORD nNumberOfBytesToWrite, LPDWORD, LPOVERLAPPED)
    "WriteFile": (BOOL, [HANDLE, c_void_p, DWORD, POINTER(DWORD), c_void_p]),
    "FlushFileBuffers": (BOOL, [HANDLE]),
    "CloseHandle": (BOOL, [HANDLE]),
    # HANDLE CreateFileW(LPCWSTR, DWORD dwDesiredAccess, DWORD dwShareMode,
    #   LPSECURITY_ATTRIBUTES, DWORD dwCreationDisposition, DWORD dwFlagsAndAttributes,
    #   HANDLE hTemplateFile)
    "CreateFileW": (
        HANDLE,
        [LPCWSTR, DWORD, DWORD, POINTER(SECURITY_ATTRIBUTES), DWORD, DWORD, HANDLE],
    ),
    # HLOCAL LocalFree(HLOCAL hMem)
    "LocalFree": (c_void_p, [c_void_p]),
}

ADVAPI32: dict[str, Prototype] = {
    # BOOL ConvertStringSecurityDescriptorToSecurityDescriptorW(LPCWSTR StringSecurityDescriptor,
    #   DWORD StringSDRevision, PSECURITY_DESCRIPTOR *SecurityDescriptor,
    #   PULONG SecurityDescriptorSize)
    "ConvertStringSecurityDescriptorToSecurityDescriptorW": (
        BOOL,
        [LPCWSTR, DWORD, POINTER(c_void_p), POINTER(ctypes.c_ulong)],
    ),
}


class PipeApi:
    def __init__(
        self, kernel32: Any, advapi32: Any, last_error: Callable[[], int] = last_error
    ) -> None:
        self.k = bind(kernel32, KERNEL32)
        self.a = bind(advapi32, ADVAPI32)
        self.last_error = last_error

    @classmethod
    def load(cls) -> PipeApi:  # pragma: no cover - Windows only
        return cls(windll("kernel32.dll"), windll("advapi32.dll"))

    def error(self, what: str) -> OSError:
        code = self.last_error()
        return OSError(code, f"{what} failed (Windows error {code})")


class PipeServer:
    """Serves `backend` on the named pipe `path` (`\\\\.\\pipe\\ztun-<device>`)."""

    def __init__(
        self,
        path: str,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        api: PipeApi | None = None,
    ) -> None:
        self.path = path
        self.backend = backend
        self.loop = loop
        self.api = api or PipeApi.load()
        self._stopping = False
        self._descriptor = c_void_p()
        self._attributes = self._security_attributes()
        # The first instance is made here, so a taken name fails start-up, not a thread.
        self._next = self._create(first=True)
        self._accepter = threading.Thread(target=self._accept, name="ztun-control", daemon=True)
        self.clients: list[threading.Thread] = []

    def _security_attributes(self) -> SECURITY_ATTRIBUTES:
        size = ctypes.c_ulong()
        convert = self.api.a["ConvertStringSecurityDescriptorToSecurityDescriptorW"]
        if not convert(PIPE_SDDL, SDDL_REVISION_1, byref(self._descriptor), byref(size)):
            raise self.api.error("ConvertStringSecurityDescriptorToSecurityDescriptorW")
        return SECURITY_ATTRIBUTES(ctypes.sizeof(SECURITY_ATTRIBUTES), self._descriptor, False)

    def _create(self, *, first: bool = False) -> int:
        mode = PIPE_ACCESS_DUPLEX | (FILE_FLAG_FIRST_PIPE_INSTANCE if first else 0)
        handle = self.api.k["CreateNamedPipeW"](
            self.path,
            mode,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            PIPE_UNLIMITED_INSTANCES,
            BUFFER_SIZE,
            BUFFER_SIZE,
            0,
            byref(self._attributes),
        )
        if handle is None or handle == INVALID_HANDLE_VALUE:
            error = self.api.error(f"CreateNamedPipeW({self.path})")
            if first and error.errno == ERROR_ACCESS_DENIED:
                raise OSError(
                    error.errno, f"another process holds {self.path}; stop it or use --control"
                )
            raise error
        return int(handle)

    def start(self) -> None:
        self._accepter.start()

    def _accept(self) -> None:
        k = self.api.k
        while True:
            handle = self._next
            if not k["ConnectNamedPipe"](handle, None):
                code = self.api.last_error()
                if code != ERROR_PIPE_CONNECTED:  # connected before we waited: fine
                    k["CloseHandle"](handle)
                    if self._stopping:
                        return
                    log.warning("control pipe: ConnectNamedPipe failed (error %d)", code)
                    self._next = self._create()
                    continue
            if self._stopping:
                k["CloseHandle"](handle)
                return
            client = threading.Thread(
                target=self._serve, args=(handle,), name="ztun-control-client", daemon=True
            )
            self.clients.append(client)
            client.start()
            try:
                self._next = self._create()
            except OSError as exc:
                log.error("control pipe: %s; no more clients", exc)
                return

    def _serve(self, handle: int) -> None:
        k = self.api.k
        buffer = ctypes.create_string_buffer(BUFFER_SIZE)
        count = DWORD()
        lines = LineReader()
        try:
            while k["ReadFile"](handle, buffer, BUFFER_SIZE, byref(count), None) and count.value:
                try:
                    batch = lines.feed(buffer.raw[: count.value])
                except ProtocolError as exc:
                    self._write(handle, failure(str(exc)))
                    return
                for line in batch:
                    future = asyncio.run_coroutine_threadsafe(answer(self.backend, line), self.loop)
                    if not self._write(handle, future.result()):
                        return
        finally:
            k["FlushFileBuffers"](handle)
            k["DisconnectNamedPipe"](handle)
            k["CloseHandle"](handle)

    def _write(self, handle: int, data: bytes) -> bool:
        written = DWORD()
        view = memoryview(data)
        while view:
            chunk = bytes(view[:BUFFER_SIZE])
            if not self.api.k["WriteFile"](handle, chunk, len(chunk), byref(written), None):
                return False  # ERROR_NO_DATA / ERROR_BROKEN_PIPE: the client left
            view = view[written.value :]
        return True

    def stop(self) -> None:
        """Stop accepting: wake the accepting thread by connecting once ourselves."""
        self._stopping = True
        k = self.api.k
        handle = k["CreateFileW"](
            self.path, GENERIC_READ | GENERIC_WRITE, 0, None, OPEN_EXISTING, 0, None
        )
        if handle is not None and handle != INVALID_HANDLE_VALUE:
            k["CloseHandle"](handle)
        self._accepter.join(5.0)
        if self._descriptor.value:
            k["LocalFree"](self._descriptor)
            self._descriptor = c_void_p()
