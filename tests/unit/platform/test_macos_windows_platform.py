"""The macOS and Windows platforms: which appliers they hand out, and how Windows tells
whether a journal's writer still runs (kernel32 through a recording fake: no Windows
here; the prototypes are those of processthreadsapi.h / handleapi.h)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

import pytest

from ztun.platform import JournalScope, UnsupportedPlatform, for_os
from ztun.platform import windows as pw
from ztun.route import Journal
from ztun.route.darwin import DarwinRoutes
from ztun.route.scutil import DarwinDns
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

    def __init__(self, *, alive: bool = True, image: str = r"C:\Python311\python.exe") -> None:
        self.alive, self.image = alive, image
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
        ("close", FakeKernel32.HANDLE),
    ]


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
        "CloseHandle": (boolean, [handle]),
    } == pw.PROCESS_PROTOTYPES


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
