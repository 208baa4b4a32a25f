"""The Host protocol over one SSH connection (paramiko): the common half of VM backends.

A QEMU guest and a Vagrant box differ in how they come up; once up, both are "a Linux
machine behind an SSH port".  This module is that second half: every command, every
background process and every file transfer of a host goes through *one* paramiko
transport (channels are multiplexed), so a test with hundreds of commands does not pay
hundreds of SSH handshakes -- the reason testinfra's ``paramiko://`` beats ``ssh://``.

Timeouts are enforced twice: the guest runs each command under coreutils ``timeout`` (so
a hung command really dies inside the guest) and the host gives up a few seconds later
whatever the guest does (so a wedged guest cannot hang the test).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import select
import shlex
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import paramiko

from harness.hosts.base import (
    DEFAULT_RUN_TIMEOUT,
    DEFAULT_SPAWN_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    CmdResult,
    CommandTimeout,
    IfAddress,
    LinkExists,
    LogLine,
    PathExists,
    ProcessNotReady,
    Readiness,
    TcpListening,
    UdpListening,
    log_tail,
)
from ztun.tools import guest_tool

log = logging.getLogger("harness.vm")

#: Extra seconds the host waits beyond a command's own timeout before abandoning it: the
#: guest-side ``timeout -k`` needs a moment to kill and report.
HOST_GRACE = 5.0
#: Seconds given to SIGKILL after the guest-side timeout's SIGTERM.
GUEST_KILL_AFTER = 2
#: coreutils ``timeout`` exits with this status when it had to stop the command.
TIMEOUT_STATUS = 124
#: Where background processes of the harness keep their logs and exit statuses in a guest.
GUEST_RUN_DIR = "/run/harness"
#: Seconds to open a channel: a TCG guest on a loaded machine can take long to answer.
CHANNEL_OPEN_TIMEOUT = 60.0
#: Largest chunk read from a channel at once.
CHUNK = 65536
#: How often a guest-side wait loop re-checks its condition (seconds, inside the guest).
GUEST_POLL = "0.05"


class SshError(RuntimeError):
    """The SSH connection to a guest could not be made or was lost."""


def connect(
    host: str,
    port: int,
    *,
    username: str,
    key_path: Path,
    timeout: float,
    check: Callable[[], None] | None = None,
) -> paramiko.SSHClient:
    """One paramiko connection, retried until the guest's sshd answers or ``timeout``.

    A user-mode (slirp) port forward accepts the TCP connection even while the guest is
    not listening yet, and then drops it; so "connected" means "the SSH banner arrived",
    and refusals and resets before the deadline are simply retried.  ``check`` is called
    before each attempt and raises if the machine died meanwhile (no point in waiting).
    """
    key = _load_key(key_path)
    # Each refused attempt makes paramiko log a traceback at ERROR: noise while booting.
    logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)
    deadline = time.monotonic() + timeout
    attempt = 0
    last: Exception | None = None
    while time.monotonic() < deadline:
        attempt += 1
        if check is not None:
            check()
        client = paramiko.SSHClient()
        # A throw-away guest on loopback: its host key is new every image, and pinning
        # it would only make a rebuilt image fail.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        remaining = max(1.0, deadline - time.monotonic())
        try:
            client.connect(
                host,
                port=port,
                username=username,
                pkey=key,
                timeout=min(5.0, remaining),
                banner_timeout=min(10.0, remaining),
                auth_timeout=min(10.0, remaining),
                allow_agent=False,
                look_for_keys=False,
            )
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            last = exc
            # Back off a little: each attempt is itself bounded by the banner timeout.
            time.sleep(min(0.2 * attempt, 1.0))  # noqa: sleep-ok - back-off between refused attempts
            continue
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        log.debug("ssh %s:%d up after %d attempt(s)", host, port, attempt)
        return client
    raise SshError(f"no SSH answer from {host}:{port} within {timeout:.0f} s: {last!r}")


def _load_key(path: Path) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        with contextlib.suppress(paramiko.SSHException):
            return kind.from_private_key_file(str(path))
    raise SshError(f"cannot read SSH private key {path}")


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


class SshHost:
    """Host protocol implementation over a paramiko client (see module docstring).

    Subclasses bring the machine up and hand over a connected client; :meth:`close`
    stops the processes this host started and closes the connection, and calls
    :meth:`_shutdown` for the subclass to power the machine off.
    """

    def __init__(self, name: str, client: paramiko.SSHClient, log_dir: Path) -> None:
        self._name = name
        self._client = client
        self._log_dir = log_dir
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._sftp: paramiko.SFTPClient | None = None
        self._processes: list[GuestProcess] = []
        self._closed = False

    # ------------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        return self._name

    @property
    def log_dir(self) -> Path:
        return self._log_dir

    @property
    def client(self) -> paramiko.SSHClient:
        """The live connection (testinfra's paramiko backend can reuse it)."""
        return self._client

    # ------------------------------------------------------------------ commands

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_RUN_TIMEOUT,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        check: bool = False,
    ) -> CmdResult:
        command = self._wrap(argv, env=env, timeout=timeout)
        started = time.monotonic()
        code, out, err = self._exec(command, input=input, deadline=started + timeout + HOST_GRACE)
        if code is None or (code == TIMEOUT_STATUS and time.monotonic() - started >= timeout):
            raise CommandTimeout(argv, timeout, out, err)
        result = CmdResult(tuple(argv), code, out, err)
        return result.check() if check else result

    def shell(self, script: str, *, timeout: float = DEFAULT_RUN_TIMEOUT) -> CmdResult:
        """Run a POSIX shell snippet (for the harness's own plumbing, not for tests)."""
        return self.run([guest_tool("sh"), "-c", script], timeout=timeout)

    @staticmethod
    def _wrap(argv: Sequence[str], *, env: Mapping[str, str] | None, timeout: float) -> str:
        # sshd only passes AcceptEnv variables, so the environment goes on the command line.
        prefix = [guest_tool("timeout"), "-k", str(GUEST_KILL_AFTER), f"{max(timeout, 0.1):g}"]
        if env:
            prefix += [guest_tool("env"), *(f"{k}={v}" for k, v in env.items())]
        return shlex.join([*prefix, *argv])

    def _exec(
        self, command: str, *, input: str | bytes | None, deadline: float
    ) -> tuple[int | None, str, str]:
        """Run ``command`` on a new channel; exit status None means the host gave up."""
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SshError(f"{self._name}: SSH connection lost")
        channel = transport.open_session(timeout=CHANNEL_OPEN_TIMEOUT)
        try:
            channel.exec_command(command)
            if input is not None:
                channel.sendall(_as_bytes(input))
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                while channel.recv_ready():
                    out += channel.recv(CHUNK)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(CHUNK)
                if channel.exit_status_ready() and not (
                    channel.recv_ready() or channel.recv_stderr_ready()
                ):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, out.decode(errors="replace"), err.decode(errors="replace")
                # A paramiko channel is selectable: wake up on data or on close, not a tick.
                select.select([channel], [], [], min(remaining, 1.0))
            code = channel.recv_exit_status()
            return code, out.decode(errors="replace"), err.decode(errors="replace")
        finally:
            channel.close()

    # ------------------------------------------------------------------ processes

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str,
        ready: Readiness | None = None,
        timeout: float = DEFAULT_SPAWN_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> GuestProcess:
        guest_log = f"{GUEST_RUN_DIR}/{name}.log"
        guest_rc = f"{GUEST_RUN_DIR}/{name}.rc"
        command = [
            *([guest_tool("env"), *(f"{k}={v}" for k, v in env.items())] if env else []),
            *argv,
        ]
        # setsid: the process leads its own group, so stop() signals the whole tree.
        # The wrapping sh records the exit status; `trap : TERM INT` lets it outlive the
        # signal that its child (which gets default handlers back on exec) dies from.
        mkdir, rm = guest_tool("mkdir"), guest_tool("rm")
        setsid, sh = guest_tool("setsid"), guest_tool("sh")
        script = (
            f"{mkdir} -p {GUEST_RUN_DIR} && {rm} -f {shlex.quote(guest_rc)} && "
            f"{setsid} {sh} -c 'trap : TERM INT; \"$@\"; echo $? > {shlex.quote(guest_rc)}' sh "
            f"{shlex.join(command)} > {shlex.quote(guest_log)} 2>&1 < /dev/null & echo $!"
        )
        started = self.run(
            [guest_tool("sh"), "-c", script], timeout=DEFAULT_RUN_TIMEOUT, check=True
        )
        process = GuestProcess(
            self,
            name=name,
            pid=int(started.stdout.strip()),
            guest_log=guest_log,
            guest_rc=guest_rc,
            log_path=self._log_dir / f"{name}.log",
        )
        self._processes.append(process)
        if ready is not None:
            process.wait_for(ready, timeout=timeout)
        return process

    def wait_ready(self, ready: Readiness, *, timeout: float = DEFAULT_SPAWN_TIMEOUT) -> None:
        if isinstance(ready, LogLine):
            raise TypeError("a LogLine is awaited on a process: use Process.wait_for")
        try:
            status = self.run(
                [guest_tool("sh"), "-c", _wait_script(ready, pid=None)], timeout=timeout
            )
        except CommandTimeout:
            status = None
        if status is None or not status.ok:
            raise TimeoutError(f"{self._name}: {ready.describe()} not within {timeout:g} s")

    # ------------------------------------------------------------------ files

    def sftp(self) -> paramiko.SFTPClient:
        """The host's SFTP session, opened on first use over the same connection."""
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(DEFAULT_RUN_TIMEOUT)
        return self._sftp

    def read_file(self, path: str | Path) -> bytes:
        with self.sftp().open(str(path), "rb") as handle:
            return bytes(handle.read())

    def write_file(self, path: str | Path, data: str | bytes) -> None:
        with self.sftp().open(str(path), "wb") as handle:
            handle.write(_as_bytes(data))

    def put(self, local: Path, remote: str) -> None:
        """Copy a host file into the guest (wheels, scripts)."""
        self.sftp().put(str(local), remote)

    def get(self, remote: str, local: Path) -> None:
        """Copy a guest file to the host (pcaps, logs)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        self.sftp().get(remote, str(local))

    # ------------------------------------------------------------------ network

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """Not possible for a VM: a socket cannot cross into another kernel.

        Tests that need a client inside a VM run one there (``run``/``spawn``); tests that
        need the host to reach a guest service use the backend's port forward.
        """
        raise NotImplementedError(
            f"{self._name}: sockets cannot be opened inside a VM from the host; run the "
            "client in the guest (run/spawn) or use a forwarded port"
        )

    def interfaces(self) -> list[str]:
        links = self._ip_json(["link", "show"])
        return [str(link["ifname"]) for link in links]

    def addresses(self, ifname: str | None = None) -> list[IfAddress]:
        args = ["addr", "show", *(["dev", ifname] if ifname else [])]
        found: list[IfAddress] = []
        for link in self._ip_json(args):
            for info in link.get("addr_info", []):
                found.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
        return found

    def _ip_json(self, args: list[str]) -> list[dict[str, Any]]:
        done = self.run([guest_tool("ip"), "-j", *args], check=True)
        data: list[dict[str, Any]] = json.loads(done.stdout or "[]")
        return data

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for process in reversed(self._processes):
                with contextlib.suppress(Exception):
                    process.stop()
            if self._sftp is not None:
                with contextlib.suppress(Exception):
                    self._sftp.close()
            with contextlib.suppress(Exception):
                self._client.close()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        """Power the machine off (subclasses)."""

    def __enter__(self) -> SshHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_script(ready: Readiness, *, pid: int | None) -> str:
    """A guest-side loop that returns 0 once ``ready`` holds, 3 if ``pid`` died first.

    Waiting inside the guest costs one SSH round trip instead of one per check.
    """
    if isinstance(ready, TcpListening | UdpListening):
        proto = "t" if isinstance(ready, TcpListening) else "u"
        fam = {socket.AF_INET: " -4", socket.AF_INET6: " -6"}.get(ready.family, "")  # type: ignore[arg-type]
        ss, grep = guest_tool("ss"), guest_tool("grep")
        check = f"{ss} -Hn{proto}l{fam} 'sport = :{ready.port}' | {grep} -q ."
    elif isinstance(ready, PathExists):
        check = f"test -e {shlex.quote(str(ready.path))}"
    elif isinstance(ready, LinkExists):
        check = f"test -e {shlex.quote(f'/sys/class/net/{ready.name}')}"
    else:
        raise TypeError(f"cannot wait for {ready!r} in the guest")
    alive = f"kill -0 {pid} 2>/dev/null || exit 3; " if pid is not None else ""
    return f"until {check}; do {alive}{guest_tool('sleep')} {GUEST_POLL}; done"


class GuestProcess:
    """A background process in an SSH guest (Process protocol).

    Its log lives in the guest; :attr:`log_path` is a host copy refreshed by
    :meth:`log_text` and by :meth:`stop`, so failing tests can attach it.
    """

    def __init__(
        self,
        host: SshHost,
        *,
        name: str,
        pid: int,
        guest_log: str,
        guest_rc: str,
        log_path: Path,
    ) -> None:
        self._host = host
        self._name = name
        self._pid = pid
        self._guest_log = guest_log
        self._guest_rc = guest_rc
        self._log_path = log_path
        self._returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def name(self) -> str:
        return self._name

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def returncode(self) -> int | None:
        if self._returncode is None:
            self._poll()
        return self._returncode

    def _poll(self) -> None:
        done = self._host.run([guest_tool("cat"), self._guest_rc])
        if done.returncode == 0 and done.stdout.strip():
            status = int(done.stdout.strip())
            # The shell reports death by signal N as 128+N; the protocol says -N.
            self._returncode = -(status - 128) if status > 128 else status

    def alive(self) -> bool:
        return (
            self.returncode is None
            and self._host.run([guest_tool("kill"), "-0", str(self._pid)]).ok
        )

    def wait(self, timeout: float | None = None) -> int:
        limit = DEFAULT_RUN_TIMEOUT if timeout is None else timeout
        rc = shlex.quote(self._guest_rc)
        script = f"until test -s {rc}; do {guest_tool('sleep')} {GUEST_POLL}; done"
        try:
            self._host.run([guest_tool("sh"), "-c", script], timeout=limit, check=True)
        except CommandTimeout as exc:
            raise TimeoutError(f"process {self._name!r} still running after {limit:g} s") from exc
        self._poll()
        assert self._returncode is not None
        return self._returncode

    def send_signal(self, sig: signal.Signals) -> None:
        self._host.run([guest_tool("kill"), f"-{int(sig)}", "--", f"-{self._pid}"])

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        if self.returncode is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.wait(timeout)
            except (TimeoutError, CommandTimeout):
                self.send_signal(signal.SIGKILL)
                self.wait(DEFAULT_STOP_TIMEOUT)
        self.log_text()
        assert self._returncode is not None
        return self._returncode

    def log_text(self) -> str:
        try:
            text = self._host.read_file(self._guest_log).decode(errors="replace")
        except OSError:
            text = ""
        self._log_path.write_text(text)
        return text

    def wait_for(self, ready: Readiness, timeout: float = DEFAULT_SPAWN_TIMEOUT) -> None:
        if isinstance(ready, LogLine):
            self._wait_log(ready, timeout)
            return
        try:
            status = self._host.run(
                [guest_tool("sh"), "-c", _wait_script(ready, pid=self._pid)], timeout=timeout
            ).returncode
        except CommandTimeout:
            status = TIMEOUT_STATUS
        if status == 0:
            return
        self._not_ready("exited" if status == 3 else f"no {ready.describe()} within {timeout:g} s")

    def _wait_log(self, ready: LogLine, timeout: float) -> None:
        """Stream the log with ``tail --pid`` and match lines as they arrive (an event)."""
        regex = ready.regex()
        command = shlex.join(
            [
                guest_tool("timeout"),
                f"{timeout:g}",
                guest_tool("tail"),
                f"--pid={self._pid}",
                "-n",
                "+1",
                "-F",
                self._guest_log,
            ]
        )
        for line in self._stream_lines(command, deadline=time.monotonic() + timeout + 1.0):
            if regex.search(line):
                return
        self._not_ready(
            "exited" if not self.alive() else f"no {ready.describe()} within {timeout:g} s"
        )

    def _stream_lines(self, command: str, *, deadline: float) -> Iterator[str]:
        transport = self._host.client.get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=CHANNEL_OPEN_TIMEOUT)
        try:
            channel.exec_command(command)
            pending = b""
            while time.monotonic() < deadline:
                select.select([channel], [], [], min(1.0, max(0.0, deadline - time.monotonic())))
                if channel.recv_ready():
                    pending += channel.recv(CHUNK)
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode(errors="replace")
                elif channel.exit_status_ready():
                    if pending:
                        yield pending.decode(errors="replace")
                    return
        finally:
            channel.close()

    def _not_ready(self, reason: str) -> None:
        text = self.log_text()
        raise ProcessNotReady(
            self._name,
            reason,
            log_path=self._log_path,
            log_tail=log_tail(text),
            returncode=self._returncode,
        )
