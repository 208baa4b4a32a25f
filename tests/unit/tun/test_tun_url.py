"""`open_device`: which backend a URL opens on which platform.

``sys.platform`` is monkeypatched and each backend's opener replaced by a recorder: this
mocks the macOS and Windows kernels (and root on Linux) that cannot be used here, and
checks what each backend is asked to create.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ztun.tun import FdDevice, darwin, linux, open_device, windows

ADDRS: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
    ipaddress.IPv4Interface("172.19.0.1/30"),
    ipaddress.IPv6Interface("fdfe:dcba:9876::1/126"),
]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((args, kwargs))
        return "device"


@pytest.fixture
def openers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    rec = {"linux": Recorder(), "darwin": Recorder(), "win32": Recorder()}
    monkeypatch.setattr(linux, "LinuxTun", rec["linux"])
    monkeypatch.setattr(darwin, "open_utun", rec["darwin"])
    monkeypatch.setattr(windows, "open_wintun", rec["win32"])
    return rec


def _on(monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    monkeypatch.setattr(sys, "platform", platform)


def test_linux_tun(monkeypatch: pytest.MonkeyPatch, openers: dict[str, Recorder]) -> None:
    _on(monkeypatch, "linux")
    assert open_device("tun://ztun0", mtu=1400, addresses=ADDRS, netns="ns1", offload=False)
    assert open_device("tun://ztun1", mtu=1400, addresses=ADDRS, multi_queue=True)
    common = {"mtu": 1400, "addresses": ADDRS}
    assert openers["linux"].calls == [
        (("ztun0",), {**common, "netns": "ns1", "offload": False, "multi_queue": False}),
        (("ztun1",), {**common, "netns": None, "offload": True, "multi_queue": True}),
    ]
    assert not openers["darwin"].calls and not openers["win32"].calls


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_multi_queue_is_linux_only(monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    _on(monkeypatch, platform)
    with pytest.raises(ValueError, match="multi-queue TUNs exist only on Linux"):
        open_device("tun://utun7", mtu=1500, addresses=ADDRS, multi_queue=True)


@pytest.mark.parametrize(
    ("url", "name"), [("tun://utun7", "utun7"), ("tun://utun", "utun"), ("tun://", "")]
)
def test_macos_utun(
    monkeypatch: pytest.MonkeyPatch, openers: dict[str, Recorder], url: str, name: str
) -> None:
    """No offload/netns reach the utun opener: offload=True (the default) is ignored."""
    _on(monkeypatch, "darwin")
    open_device(url, mtu=1500, addresses=ADDRS)
    assert openers["darwin"].calls == [((name,), {"mtu": 1500, "addresses": ADDRS})]


def test_macos_rejects_a_linux_style_name_before_touching_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _on(monkeypatch, "darwin")
    with pytest.raises(ValueError, match=r"tun://utunN .* tun://utun for the next free"):
        open_device("tun://ztun0", mtu=1500, addresses=ADDRS)


def test_windows_wintun(monkeypatch: pytest.MonkeyPatch, openers: dict[str, Recorder]) -> None:
    _on(monkeypatch, "win32")
    open_device("tun://ztun0", mtu=1420, addresses=ADDRS)
    assert openers["win32"].calls == [(("ztun0",), {"mtu": 1420, "addresses": ADDRS})]


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_netns_is_linux_only(
    monkeypatch: pytest.MonkeyPatch, openers: dict[str, Recorder], platform: str
) -> None:
    _on(monkeypatch, platform)
    with pytest.raises(ValueError, match="namespaces exist only on Linux"):
        open_device("tun://utun3", mtu=1500, addresses=ADDRS, netns="ns1")
    assert not openers[platform].calls


def test_other_platforms_are_refused(
    monkeypatch: pytest.MonkeyPatch, openers: dict[str, Recorder]
) -> None:
    _on(monkeypatch, "freebsd14")
    with pytest.raises(ValueError, match="Linux, macOS and Windows, not freebsd14"):
        open_device("tun://tun0", mtu=1500, addresses=ADDRS)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(w)


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_fd_is_the_same_everywhere(
    monkeypatch: pytest.MonkeyPatch, pipe: tuple[int, int], platform: str
) -> None:
    _on(monkeypatch, platform)
    dev = open_device(f"fd://{pipe[0]}", mtu=1280, addresses=())
    assert isinstance(dev, FdDevice) and dev.mtu == 1280
    dev.close()


@pytest.mark.parametrize(
    ("url", "match"), [("fd://three", "descriptor number"), ("tap://x", "unknown scheme")]
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        open_device(url, mtu=1500, addresses=())
