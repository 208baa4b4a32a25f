"""Stand-ins for a DLL's exported functions (no Windows here): what the Wintun and the
named-pipe tests build their function tables from, exactly as from a real DLL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FakeFn:
    """A stand-in for a ctypes function: carries restype/argtypes, calls a Python impl."""

    def __init__(self, impl: Callable[..., Any]) -> None:
        self.impl = impl
        self.restype: Any = "unset"
        self.argtypes: Any = "unset"

    def __call__(self, *args: Any) -> Any:
        return self.impl(*args)


def fake_library(impl: object, names: list[str]) -> Any:
    lib = type("FakeDll", (), {})()
    for name in names:
        setattr(lib, name, FakeFn(getattr(impl, name)))
    return lib
