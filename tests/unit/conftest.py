"""Unit tests never touch this host's network: a guard on every one of them.

Unit tests run as whoever runs pytest -- root here -- in the caller's own network
namespace. Several call ``ztun.cli.main(["run", ...])`` expecting exit 2 for a bad flag;
once a flag becomes valid (``--proxy http://...`` when HTTP outbounds were added), the
same call went on into ``ztun.app.run`` and created the TUN ``ztun0`` in the root
namespace. So, for every unit test, the doors to the kernel's network state fail the
test instead: starting a run (``ztun.app.run``: routes, DNS, the TUN), creating a Linux
TUN, and moving the process into a named namespace. A test that needs one of them is an
integration test and belongs in namespaces the harness creates.
"""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

import ztun.app
import ztun.netns
import ztun.tun.linux

GUARDED = (
    (ztun.app, "run", "ztun.app.run (a TUN, routes and DNS in this namespace)"),
    (ztun.tun.linux.LinuxTun, "__init__", "ztun.tun.linux.LinuxTun (a TUN in this namespace)"),
    (ztun.netns, "enter_netns", "ztun.netns.enter_netns (moves this process)"),
)


class HostNetworkTouched(AssertionError):
    """A unit test reached code that changes this host's network."""


def _refusal(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise HostNetworkTouched(
            f"a unit test reached {what}; it would change the network of the namespace "
            "pytest runs in. Bad input must exit 2 before that; anything that needs the "
            "kernel is an integration test in the harness's namespaces."
        )

    refuse.guards = what  # type: ignore[attr-defined]
    return refuse


@pytest.fixture(autouse=True)
def no_host_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for owner, name, what in GUARDED:
        monkeypatch.setattr(owner, name, _refusal(what))
