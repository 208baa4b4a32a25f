"""The portable path imports and starts where macOS and Windows lack Linux's calls.

The real OS is absent here, so each test simulates one in a fresh interpreter (`python
-c`): the names that OS's Python does not have are removed before ztun is imported --
`os.pipe2`/`os.splice` (Linux only), `fcntl`, `os.fork`, `select.poll`, `signal.SIGHUP`,
`socket.AF_UNIX` (not on Windows) and so on -- and a module that uses one at import
time, or a probe that calls one, fails the test with the interpreter's own traceback.
(The standard library is imported before the names go: its own per-OS branches are
CPython's business, not ztun's.)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: What each OS's CPython 3.11 lacks of what ztun's Linux code uses.
MISSING = {
    "darwin": {
        "os": ["pipe2", "splice", "pidfd_open", "sched_setaffinity", "memfd_create"],
        "select": ["epoll"],
        "socket": ["SO_MARK", "SO_BINDTODEVICE", "SOL_UDP", "MSG_NOSIGNAL", "SO_ORIGINAL_DST"],
        "errno": ["EBADFD"],  # <sys/errno.h> has no EBADFD
        "modules": [],
    },
    "win32": {
        "os": [
            "pipe2",
            "splice",
            "pidfd_open",
            "sched_setaffinity",
            "memfd_create",
            "fork",
            "set_blocking",
            "getuid",
            "readv",
        ],
        "select": ["epoll", "poll"],
        "socket": [
            "SO_MARK",
            "SO_BINDTODEVICE",
            "SOL_UDP",
            "MSG_NOSIGNAL",
            "AF_UNIX",
            "SO_ORIGINAL_DST",
            "SO_REUSEPORT",
        ],
        "signal": ["SIGHUP", "SIGKILL", "pthread_sigmask"],
        "errno": ["EBADFD"],  # nor has the UCRT's <errno.h>
        "modules": ["fcntl", "termios", "resource", "pwd", "grp"],
    },
}

#: What `ztun run` imports on a platform without Linux's accelerations.
PORTABLE_PATH = [
    "ztun.cli",
    "ztun.app",
    "ztun.cleanup",
    "ztun.engine",
    "ztun.pump",
    "ztun.relay",
    "ztun.router",
    "ztun.dnsflow",
    "ztun.dns",
    "ztun.outbound",
    "ztun.outbound.uplink",
    "ztun.stack",
    "ztun.tun",
    "ztun.tun.url",
    "ztun.route",
    "ztun.platform",
    "ztun.instance",
    "ztun.flows",
    "ztun.logs",
    "ztun.metrics",
    "ztun.metrics_server",
    "ztun.reload",
    "ztun.service",
    "ztun.control",
    "ztun.control.commands",
    "ztun.control.backends",
    "ztun.control.winpipe",
]


def simulate(os_name: str, body: str) -> subprocess.CompletedProcess[str]:
    missing = MISSING[os_name]
    prelude = textwrap.dedent(
        f"""
        import errno, os, select, signal, socket, sys
        # The standard library picks its own per-OS code at import time (subprocess,
        # asyncio): load it whole first, so what follows checks ztun's code alone.
        import asyncio, selectors, subprocess, ctypes, ipaddress, json, logging, threading
        for module, names in (
            (os, {missing["os"]!r}),
            (select, {missing["select"]!r}),
            (socket, {missing["socket"]!r}),
            (signal, {missing.get("signal", [])!r}),
            (errno, {missing["errno"]!r}),
        ):
            for name in names:
                if hasattr(module, name):
                    delattr(module, name)
        for name in {missing["modules"]!r}:
            sys.modules[name] = None  # the import system's "not available"
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("os_name", sorted(MISSING))
def test_the_portable_path_imports_without_what_the_os_lacks(os_name: str) -> None:
    done = simulate(
        os_name,
        f"""
        import importlib
        for name in {PORTABLE_PATH!r}:
            importlib.import_module(name)
        import os
        assert not hasattr(os, "pipe2")  # the simulation held
        print("imported", len([m for m in sys.modules if m.startswith("ztun")]))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported ")


@pytest.mark.parametrize("os_name", sorted(MISSING))
def test_the_os_platform_probes_and_builds_the_engine_parts(os_name: str) -> None:
    """The OS's own platform module, its probe, and the parts the engine builds at start
    (the pump, a copy relay, an uplink without GSO) -- none calls what the OS lacks."""
    done = simulate(
        os_name,
        f"""
        import ipaddress, threading
        from collections import Counter
        from ztun.options import RunOptions
        from ztun.platform import for_os
        from ztun.pump import TunPump
        from ztun.relay import Relay
        from ztun.stack import SystemStack

        platform = for_os({os_name!r})
        accel = platform.probe(RunOptions())
        assert not (accel.splice or accel.vnet_hdr or accel.multi_queue or accel.udp_gso
                    or accel.redirect or accel.kernel_nat), accel
        print(platform.name, platform.state_dir.as_posix(), accel.describe())

        class NoDevice:  # never read: the pump is built, not started
            frame_header_len = 0

        # A loop's self-pipe is the standard library's per-OS code: a stand-in will do.
        loop = object()
        stack = SystemStack(inet4=ipaddress.IPv4Interface("172.19.0.1/30"), inet6=None)
        pump = TunPump(NoDevice(), stack, threading.Lock(), loop, print, Counter(), print)
        pump.stop()
        """,
    )
    assert done.returncode == 0, done.stderr
    name, state_dir, described = done.stdout.strip().split(" ", 2)
    assert (name, state_dir) == {
        "darwin": ("darwin", "/var/run/ztun"),
        "win32": ("windows", "C:\\ProgramData/ztun"),
    }[os_name]
    tun_reader = "thread" if os_name == "win32" else "loop"
    assert described == (
        "splice=off vnet_hdr=off multi_queue=off udp_gso=off redirect=off kernel_nat=off "
        f"tun_reader={tun_reader}"
    )
