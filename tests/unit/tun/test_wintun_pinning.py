"""wintun.dll: only the pinned build is loaded, checked before LoadLibrary.

The DLL files here are the real ones: the dev extra installs the pinned wheel
(pytun-pmd3 3.0.3, never imported: its files are found through its metadata), so the
SHA-256 pins and the PE version reader are checked against the very bytes Windows would
load.  Only LoadLibrary itself and the running driver are Windows-only; the driver query
(WintunGetRunningDriverVersion) goes through a fake wintun.dll function table.
"""

from __future__ import annotations

import errno
import importlib.metadata
import sys
from pathlib import Path

import pytest

from ztun.tun import DeviceError
from ztun.tun import windows as w

pytestmark = pytest.mark.windows


def wheel_dll(arch: str) -> Path:
    try:
        dist = importlib.metadata.distribution(w.WINTUN_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{w.WINTUN_WHEEL} is not installed (pip install -e '.[dev]')")
    return Path(str(dist.locate_file(f"{w.WINTUN_WHEEL_DIR}/{arch}/wintun.dll")))


@pytest.mark.parametrize("arch", sorted(w.WINTUN_SHA256))
def test_the_wheels_dlls_are_the_pinned_build(arch: str) -> None:
    image = wheel_dll(arch).read_bytes()
    assert w.pe_file_version(image) == w.WINTUN_FILE_VERSION == (0, 14, 1, 0)
    w.verify_wintun(image, arch, arch)  # raises on any mismatch


def test_one_changed_byte_is_refused() -> None:
    image = bytearray(wheel_dll("amd64").read_bytes())
    image[len(image) // 2] ^= 0x01
    with pytest.raises(DeviceError, match=r"SHA-256 [0-9a-f]{64} is not the pinned") as info:
        w.verify_wintun(bytes(image), "amd64", "wintun.dll")
    assert info.value.errno == errno.EPERM


def test_another_architectures_dll_is_refused() -> None:
    with pytest.raises(DeviceError, match=r"not the pinned Wintun 0\.14\.1 amd64 DLL"):
        w.verify_wintun(wheel_dll("arm64").read_bytes(), "amd64", "wintun.dll")


def test_a_version_other_than_the_pinned_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(w, "WINTUN_FILE_VERSION", (0, 14, 2, 0))
    with pytest.raises(DeviceError, match=r"file version \(0, 14, 1, 0\), pinned \(0, 14, 2, 0\)"):
        w.verify_wintun(wheel_dll("x86").read_bytes(), "x86", "wintun.dll")


@pytest.mark.parametrize(
    "image", [b"", b"MZ" + bytes(100), bytes(0x3C) + (0x40).to_bytes(4, "little") + b"PE\0\0"]
)
def test_pe_reader_refuses_what_is_not_a_versioned_pe(image: bytes) -> None:
    with pytest.raises(ValueError):
        w.pe_file_version(image)


@pytest.mark.parametrize(
    ("compiler", "arch"),
    [
        ("MSC v.1938 64 bit (AMD64)", "amd64"),
        ("MSC v.1938 64 bit (ARM64)", "arm64"),
        ("MSC v.1938 32 bit (Intel)", "x86"),
        ("MSC v.1938 32 bit (ARM)", "arm"),
    ],
)
def test_arch_is_the_pythons_own(compiler: str, arch: str) -> None:
    assert w.wintun_arch(compiler) == arch


def test_an_unknown_architecture_is_refused() -> None:
    with pytest.raises(DeviceError, match=r"no pinned wintun\.dll"):
        w.wintun_arch("GCC 12.2.0")


def test_locate_prefers_the_users_path() -> None:
    assert w.locate_wintun({w.WINTUN_DLL_ENV: r"C:\tools\wintun.dll"}) == Path(
        r"C:\tools\wintun.dll"
    )


def test_locate_without_the_wheel_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DeviceError, match=r'pip install "ztun\[windows\]".*ZTUN_WINTUN_DLL'):
        w.locate_wintun({})


def test_load_verifies_before_loading(tmp_path: Path) -> None:
    """A tampered file never reaches LoadLibrary (WintunApi.load refuses it here, on any
    OS); the pinned file passes the same checks."""
    good = wheel_dll(w.wintun_arch() if sys.platform == "win32" else "amd64").read_bytes()
    path = tmp_path / "wintun.dll"
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.raises(DeviceError, match="not the pinned"):
        if sys.platform == "win32":
            w.WintunApi.load({w.WINTUN_DLL_ENV: str(path)})
        w.verify_wintun(path.read_bytes(), "amd64", str(path))
    path.write_bytes(good)
    assert w.locate_wintun({w.WINTUN_DLL_ENV: str(path)}) == path
    w.verify_wintun(path.read_bytes(), "amd64", str(path))


class DriverOnly:
    """The one wintun.dll export the driver check calls, plus what binding needs."""

    def __init__(self, version: int) -> None:
        for name in w.WINTUN_PROTOTYPES:
            setattr(self, name, _Fn(lambda *a: None))
        self.WintunGetRunningDriverVersion = _Fn(lambda: version)


class _Fn:
    def __init__(self, impl: object) -> None:
        self.impl = impl

    def __call__(self, *args: object) -> object:
        return self.impl(*args)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("version", "shown"), [(0, "none"), (0x000E0000, "14.0"), (0x0000000F, "0.15")]
)
def test_a_running_driver_other_than_0_14_is_refused(version: int, shown: str) -> None:
    api = w.WintunApi(DriverOnly(version), last_error=lambda: 2)
    with pytest.raises(DeviceError, match=f"driver is {shown}, ztun is tested with 0.14 only"):
        api.check_driver()


def test_the_pinned_driver_passes() -> None:
    w.WintunApi(DriverOnly(0x0000000E), last_error=lambda: 0).check_driver()
