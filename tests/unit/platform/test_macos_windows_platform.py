"""The macOS and Windows platforms: which appliers they hand out, and how Windows tells
whether a journal's writer still runs (kernel32 through a recording fake: no Windows
here; the prototypes are those of processthreadsapi.h / handleapi.h)."""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ztun.platform import JournalScope, UnsupportedPlatform, for_os
from ztun.platform import windows as pw
from ztun.route import Journal
from ztun.route.darwin import DarwinDns, DarwinRoutes
from ztun.tun import DeviceError


@pytest.mark.macos
def test_macos_hands_out_the_pf_route_and_scutil_appliers(tmp_path: Path) -> None:
    platform = for_os("darwin")
    journal = Journal(tmp_path / "utun7.journal")
    routes, dns = platform.routes(journal), platform.dns(journal)
    assert isinstance(routes, DarwinRoutes) and routes.journal is journal
    assert isinstance(dns, DarwinDns) and dns.journal is journal and dns.device == "utun7"
    assert platform.journal_scope(journal.path) is JournalScope.HERE
    assert platform.journal_path("utun7") == Path("/var/run/ztun/utun7.journal")
    with pytest.raises(UnsupportedPlatform, match="--redirect is not available on darwin"):
        platform.install_redirect("utun7", 1234)


@pytest.mark.windows
@pytest.mark.skipif(sys.platform == "win32", reason="this is Windows: iphlpapi.dll loads")
def test_windows_routes_need_iphlpapi(tmp_path: Path) -> None:
    platform = for_os("win32")
    with pytest.raises(DeviceError, match=r"iphlpapi\.dll exists only on Windows"):
        platform.routes(Journal(tmp_path / "ztun0.journal"))
    with pytest.raises(DeviceError, match=r"iphlpapi\.dll exists only on Windows"):
        platform.dns(Journal(tmp_path / "ztun0.journal"))  # --dns: SetInterfaceDnsSettings


class FakeKernel32:
    HANDLE = 0x4C

    def __init__(
        self,
        *,
        alive: bool = True,
        image: str = r"C:\Python311\python.exe",
        created: float = 1_700_000_000.0,
    ) -> None:
        self.alive, self.image, self.created = alive, image, created
        self.calls: list[tuple[Any, ...]] = []

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int | None:
        self.calls.append(("open", access, inherit, pid))
        return self.HANDLE if pid == 1234 else None

    def GetExitCodeProcess(self, handle: int, code_ref: Any) -> int:
        assert handle == self.HANDLE
        code_ref._obj.value = 259 if self.alive else 0  # STILL_ACTIVE
        return 1

    def QueryFullProcessImageNameW(self, handle: int, flags: int, buf: Any, size_ref: Any) -> int:
        self.calls.append(("image", handle, flags, len(buf), size_ref._obj.value))
        buf.value = self.image
        return 1

    def GetProcessTimes(self, handle: int, *refs: Any) -> int:
        """Fills lpCreationTime: a FILETIME (minwinbase.h: DWORD dwLowDateTime @0,
        DWORD dwHighDateTime @4), 100 ns intervals since 1601-01-01, written as bytes."""
        assert handle == self.HANDLE and len(refs) == 4
        assert all(ctypes.sizeof(ref._obj) == 8 for ref in refs)
        ticks = round(self.created * 10_000_000) + 116_444_736_000_000_000
        raw = (ticks & 0xFFFFFFFF).to_bytes(4, "little") + (ticks >> 32).to_bytes(4, "little")
        ctypes.memmove(ctypes.addressof(refs[0]._obj), raw, 8)
        self.calls.append(("times", handle))
        return 1

    def CloseHandle(self, handle: int) -> int:
        self.calls.append(("close", handle))
        return 1


def library(fake: FakeKernel32) -> Any:
    lib = type("FakeKernel32Dll", (), {})()
    for name in pw.PROCESS_PROTOTYPES:
        impl = getattr(fake, name)
        setattr(lib, name, type("Fn", (), {"__call__": lambda self, *a, f=impl: f(*a)})())
    return lib


@pytest.mark.windows
def test_process_image_asks_kernel32_exactly_this() -> None:
    fake = FakeKernel32()
    assert pw.process_image(library(fake), 1234) == r"C:\Python311\python.exe"
    assert fake.calls == [
        ("open", 0x1000, False, 1234),  # PROCESS_QUERY_LIMITED_INFORMATION, not inherited
        ("image", FakeKernel32.HANDLE, 0, 32768, 32768),  # flags 0: the Win32 path form
        ("times", FakeKernel32.HANDLE),
        ("close", FakeKernel32.HANDLE),
    ]
    assert pw.process_identity(library(fake), 1234) == (
        r"C:\Python311\python.exe",
        1_700_000_000.0,
    )


def journal_by(tmp_path: Path, pid: int, begun: float | None) -> Journal:
    """A journal begun by `pid` at `begun` (None: one written before the time was kept)."""
    journal = Journal(tmp_path / "ztun0.journal")
    record = {"op": "begin", "v": 1, "device": "ztun0", "netns": None, "pid": pid}
    if begun is not None:
        record["time"] = begun
    journal.path.write_text(json.dumps(record) + "\n")
    return journal


@pytest.mark.windows
@pytest.mark.parametrize(
    ("image", "created", "begun", "owner"),
    [
        (r"C:\Python311\python.exe", 1_700_000_000.0, 1_700_000_100.0, 1234),  # the writer
        (r"C:\venv\Scripts\ztun.exe", 1_700_000_100.5, 1_700_000_100.0, 1234),  # clock slack
        # The writer died and Windows gave its pid to a ztun started after the journal:
        (r"C:\venv\Scripts\ztun.exe", 1_700_000_200.0, 1_700_000_100.0, None),
        (r"C:\Windows\System32\svchost.exe", 1_700_000_000.0, 1_700_000_100.0, None),
        (r"C:\Python311\python.exe", 1_700_000_200.0, None, 1234),  # an old journal: image only
    ],
)
def test_a_journals_writer_is_its_pid_its_image_and_older_than_the_journal(
    tmp_path: Path, image: str, created: float, begun: float | None, owner: int | None
) -> None:
    fake = FakeKernel32(image=image, created=created)
    identity = lambda pid: pw.process_identity(library(fake), pid)  # noqa: E731
    assert pw.writer_alive(journal_by(tmp_path, 1234, begun), identity) == owner
    assert pw.writer_alive(journal_by(tmp_path, 99, begun), identity) is None  # no process


def test_a_journal_records_when_it_was_begun(tmp_path: Path) -> None:
    import time

    before = time.time()
    journal = Journal(tmp_path / "j.journal")
    journal.begin("ztun0", None)
    state = journal.read()
    assert state.begun is not None and before <= state.begun <= time.time()


@pytest.mark.windows
def test_an_exited_or_missing_process_is_no_writer() -> None:
    fake = FakeKernel32(alive=False)
    assert pw.process_image(library(fake), 1234) is None
    assert fake.calls[-1] == ("close", FakeKernel32.HANDLE)
    assert pw.process_image(library(FakeKernel32()), 99) is None


@pytest.mark.windows
@pytest.mark.parametrize(
    ("image", "is_ztun"),
    [
        (r"C:\Python311\python.exe", True),
        (r"C:\venv\Scripts\ztun.exe", True),
        (r"C:\Python311\pythonw.exe", True),
        (r"C:\Windows\System32\svchost.exe", False),
        (r"C:\tools\notztun.exe", False),
    ],
)
def test_what_counts_as_a_ztun_process(image: str, is_ztun: bool) -> None:
    assert pw.is_ztun_image(image) is is_ztun


@pytest.mark.windows
def test_process_prototypes_as_in_the_headers() -> None:
    dword, handle, boolean = ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int
    assert {
        "OpenProcess": (handle, [dword, boolean, dword]),
        "GetExitCodeProcess": (boolean, [handle, ctypes.POINTER(dword)]),
        "QueryFullProcessImageNameW": (
            boolean,
            [handle, dword, ctypes.c_wchar_p, ctypes.POINTER(dword)],
        ),
        "GetProcessTimes": (boolean, [handle, *[ctypes.POINTER(pw.FILETIME)] * 4]),
        "CloseHandle": (boolean, [handle]),
    } == pw.PROCESS_PROTOTYPES
    # minwinbase.h FILETIME: DWORD dwLowDateTime @0, DWORD dwHighDateTime @4; 8 bytes.
    assert ctypes.sizeof(pw.FILETIME) == 8 and pw.FILETIME.dwHighDateTime.offset == 4


#: The macOS and Windows OS layers and what their byte-level tests import.
OS_LAYERS = [
    "ztun.win32",
    "ztun.tun.darwin",
    "ztun.tun.windows",
    "ztun.tun.steering",
    "ztun.route.darwin",
    "ztun.route.scutil",
    "ztun.route.windows",
    "ztun.route.system",
    "ztun.route.journaled",
    "ztun.platform.darwin",
    "ztun.platform.windows",
]


@pytest.mark.parametrize("os_name", ["darwin", "win32"])
def test_the_os_layers_import_where_the_os_lacks_linux_calls(os_name: str) -> None:
    """Simulated as the portable-path test does (its `simulate`), with ``sys.platform``
    set to the OS too, so a module that branches on it at import time takes that branch."""
    from tests.unit.platform.test_portable_imports import simulate

    done = simulate(
        os_name,
        f"""
        import importlib
        sys.platform = {os_name!r}
        for name in {OS_LAYERS!r}:
            importlib.import_module(name)
        from ztun.platform import for_os
        from ztun.tun.windows import pe_file_version, wintun_arch
        from ztun.route.darwin import get_message
        assert not hasattr(os, "pipe2") and sys.modules.get("pytun_pmd3") is None
        print("ok", for_os({os_name!r}).name)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", {"darwin": "darwin", "win32": "windows"}[os_name]]
