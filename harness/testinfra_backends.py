"""testinfra for every Host: a ``netns`` backend of ours, and ``paramiko://`` for VMs.

testinfra has no entry points for backends; its registry is the module-level
``testinfra.backend.BACKENDS`` map of scheme -> "module.Class".  :func:`register` adds
``netns`` there (the plugin calls it at configure time), after which
``testinfra.get_host("netns://NAME")`` works like any built-in scheme.

testinfra puts no timeout on commands.  Both backends here add one: the netns backend
through ``subprocess.run(timeout=...)``; the paramiko one by running the command under
the guest's coreutils ``timeout`` and by a socket timeout on the channel.  A timeout
raises :class:`harness.hosts.CommandTimeout`, like :meth:`Host.run`.

For a VM, :func:`testinfra_host` reuses the Host's own paramiko connection, so testinfra
adds no SSH handshake at all.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import testinfra
import testinfra.backend
import testinfra.host
from testinfra.backend import base
from testinfra.backend.paramiko import ParamikoBackend

from harness.hosts.base import DEFAULT_RUN_TIMEOUT, CommandTimeout, Host
from ztun.tools import guest_tool, tool

__all__ = [
    "NETNS_SCHEME",
    "NetnsBackend",
    "TimedParamikoBackend",
    "register",
    "testinfra_host",
]

NETNS_SCHEME = "netns"


class NetnsBackend(base.BaseBackend):  # type: ignore[misc]
    """Run testinfra's commands with ``ip netns exec NAME sh -c COMMAND``.

    Files, packages and users are the root namespace's (a namespace shares the file
    system); interfaces, addresses, routes and sockets are the namespace's own.
    """

    NAME = NETNS_SCHEME

    def __init__(
        self, hostspec: str, *args: Any, timeout: float = DEFAULT_RUN_TIMEOUT, **kwargs: Any
    ) -> None:
        self.netns = hostspec
        self.timeout = float(timeout)
        super().__init__(hostspec, *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        argv = [tool("ip"), "netns", "exec", self.netns, tool("sh"), "-c", cmd]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(
                [tool("sh"), "-c", cmd],
                self.timeout,
                _text(exc.stdout),
                _text(exc.stderr),
            ) from exc
        return self.result(done.returncode, self.encode(cmd), done.stdout, done.stderr)


class TimedParamikoBackend(ParamikoBackend):  # type: ignore[misc]
    """testinfra's paramiko backend with a per-command timeout and an injected client."""

    #: Seconds beyond the guest-side timeout before the host gives up on the channel.
    GRACE = 5.0

    def __init__(
        self,
        hostspec: str,
        *args: Any,
        command_timeout: float = DEFAULT_RUN_TIMEOUT,
        client: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(hostspec, *args, **kwargs)
        self.command_timeout = float(command_timeout)
        if client is not None:
            # `client` is a functools.cached_property: seeding it skips testinfra's connect.
            self.__dict__["client"] = client

    def _exec_command(self, command: bytes) -> tuple[int, bytes, bytes]:
        timeout, sh = guest_tool("timeout"), guest_tool("sh")
        guarded = f"{timeout} -k 2 {self.command_timeout:g} {sh} -c {shlex.quote(command.decode())}"
        transport = self.client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=self.command_timeout)
        chan.settimeout(self.command_timeout + self.GRACE)
        try:
            chan.exec_command(guarded)
            stdout = b"".join(chan.makefile("rb"))
            stderr = b"".join(chan.makefile_stderr("rb"))
            rc: int = chan.recv_exit_status()
        except TimeoutError as exc:
            raise CommandTimeout(
                [guest_tool("sh"), "-c", command.decode()], self.command_timeout, "", ""
            ) from exc
        finally:
            chan.close()
        if rc == 124:  # coreutils timeout: the command ran out of time in the guest
            raise CommandTimeout(
                [guest_tool("sh"), "-c", command.decode()],
                self.command_timeout,
                stdout.decode(errors="replace"),
                stderr.decode(errors="replace"),
            )
        return rc, stdout, stderr


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def register() -> None:
    """Add the ``netns`` scheme to testinfra's backend map (idempotent)."""
    testinfra.backend.BACKENDS[NETNS_SCHEME] = f"{__name__}.NetnsBackend"


def testinfra_host(host: Host, *, timeout: float = DEFAULT_RUN_TIMEOUT) -> testinfra.host.Host:
    """A testinfra Host for any harness Host: ``netns://NAME`` or ``paramiko://`` to a VM.

    A VM host (anything with ``ssh_port`` and a paramiko ``client``, such as QemuHost or
    VagrantHost) is reached as ``paramiko://root@127.0.0.1:PORT`` over the Host's own
    connection; a namespace host through the ``netns`` backend.
    """
    register()
    client = getattr(host, "client", None)
    port = getattr(host, "ssh_port", None)
    if client is not None and port is not None:
        user = getattr(host, "ssh_user", "root")
        ssh_host = getattr(host, "ssh_host", "127.0.0.1")
        key = getattr(host, "ssh_key", None)
        spec = f"paramiko://{user}@{ssh_host}:{port}"
        backend = TimedParamikoBackend(
            spec,
            ssh_identity_file=str(key) if key else None,
            timeout=int(timeout),
            command_timeout=timeout,
            client=client,
        )
    else:
        backend = NetnsBackend(host.name, timeout=timeout)
    infra = testinfra.host.Host(backend)
    backend.set_host(infra)
    return infra


# pytest collects module-level callables named test*: this one is a helper, not a test.
testinfra_host.__test__ = False  # type: ignore[attr-defined]
