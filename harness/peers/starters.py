"""Start SOCKS5 servers and traffic targets inside a Host, each awaited until ready.

Every starter takes the Host first, binds only to the address it is given (tests never
listen on wildcards they did not ask for), writes its config files into the host's log
directory (so they are attached to a failing test next to the logs), and returns a small
handle with the address, the :class:`~harness.hosts.Process` and ``stop()``.

Known limits of the real servers, measured here (see DESIGN.md):

* microsocks 1.0.3: CONNECT only, no UDP ASSOCIATE, relays through a 1 KiB buffer, and
  no half-close: the first EOF from either side closes both directions (a client that
  shuts down its write side loses the replies still in flight).
* danted 1.4.2: CONNECT and UDP ASSOCIATE. It accepts datagrams only from the address the
  client declared in its UDP ASSOCIATE request. sing-box declares ``[::1]:0`` (or
  ``127.0.0.1:0``): with only an IPv4 internal address danted answers the request with
  "address type not supported"; with a dual-stack internal it accepts and then blocks
  every datagram ("expected udp packet from clientaddress ::1.0"). So sing-box UDP
  through danted fails by design of both, not by a harness bug.
  Its ``username`` method checks the *system* password database: the user must exist
  in the host with that password; the starter does not create users.
* ``ssh -D``: CONNECT only (OpenSSH implements no UDP ASSOCIATE and no SOCKS5 auth).
"""

from __future__ import annotations

import ipaddress
import itertools
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import skips
from harness.hosts import Host, LogLine, Process, TcpListening, UdpListening
from harness.peers.recording import (
    READY_LINE,
    Socks5Request,
    load_requests,
    parse_jsonl,
)
from harness.timescale import scaled
from ztun.servers.danted import danted_config
from ztun.tools import TOOLS, tool

READY_REGEX = rf"^{READY_LINE} "
DNS_PORT = 53
REQUEST_POLL = 0.02  # seconds between reads of the recording log while waiting
DEFAULT_REQUEST_WAIT = 10.0
SSHD_PORT = 2222  # sshd for `ssh -D` listens on loopback of the proxy host only


# --------------------------------------------------------------------------- helpers


def host_python(host: Host) -> str:
    """The Python interpreter to run harness modules with inside ``host``.

    A backend whose hosts share this machine's filesystem (netns) runs this interpreter;
    a backend that needs another one exposes it as ``host.python``.
    """
    return str(getattr(host, "python", sys.executable))


def which(host: Host, name: str) -> str | None:
    """Path of the registered tool ``name`` inside ``host`` (``/usr/sbin`` even if not on PATH)."""
    script = 'command -v "$1" || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; }'
    result = host.run([tool("sh"), "-c", script, "which", tool(name)], timeout=10.0)
    path = result.stdout.strip().splitlines()
    return path[0] if result.ok and path else None


def require_tool(host: Host, name: str) -> str:
    """Path of the registered tool ``name`` in ``host``.

    Missing on this machine too: fail with the apt-get line (or skip) as
    :func:`harness.skips.require_tool` does; missing only in a guest: skip naming the
    package its recipe lacks.
    """
    path = which(host, name)
    if path is None:
        skips.require_tool(name)
        package = TOOLS[name].package
        pytest.skip(f"{name} is not installed in host {host.name} (Debian package {package})")
    return path


def _bracket(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def _workfile(host: Host, name: str) -> Path:
    """A path for a config or data file, in the host's log dir (kept with the logs)."""
    host.run([tool("mkdir"), "-p", str(host.log_dir)], timeout=10.0, check=True)
    return Path(host.log_dir) / name


_serial = itertools.count(1)


def _unique(prefix: str) -> str:
    """Process/file names unique within a host (a test may start two of a kind)."""
    return f"{prefix}-{next(_serial)}"


# --------------------------------------------------------------------------- handles


@dataclass
class PeerServer:
    """A server started in a host: where it listens and its process."""

    kind: str
    host: Host
    address: str
    port: int
    process: Process

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.address, self.port

    def stop(self) -> None:
        self.process.stop()

    def log_text(self) -> str:
        return self.process.log_text()

    def url_for(self, scheme: str, user: str | None = None, password: str | None = None) -> str:
        """``scheme://[user:password@]address:port`` (percent-encoded), e.g. a danted's
        SOCKS4 side: ``url_for("socks4")``."""
        if user is None:
            auth = ""
        else:
            quote = urllib.parse.quote
            auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@"
        return f"{scheme}://{auth}{_bracket(self.address)}:{self.port}"


@dataclass
class Socks5Server(PeerServer):
    """A SOCKS5 server; ``url`` is what a tun2socks is given (``socks5://[u:p@]host:port``)."""

    username: str | None = None
    password: str | None = None
    supports_udp: bool = False
    extra_processes: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.url_for("socks5", self.username, self.password)

    def stop(self) -> None:
        super().stop()
        for proc in reversed(self.extra_processes):
            proc.stop()


@dataclass
class RecordingSocks5(Socks5Server):
    """The harness's recording server; ``requests()`` reads its JSONL log from the host."""

    log_path: Path = field(default_factory=Path)

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.host.read_file(self.log_path).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return parse_jsonl(text)

    def requests(self) -> list[Socks5Request]:
        return load_requests(self.events())

    def wait_for_request(
        self,
        predicate: Callable[[Socks5Request], bool],
        *,
        timeout: float = DEFAULT_REQUEST_WAIT,
    ) -> Socks5Request:
        """First logged request matching ``predicate``, waiting for it up to ``timeout``.

        The server logs a CONNECT's byte counts when the relay ends, which can trail the
        client's close by a few milliseconds. The log lives in the host (possibly a VM),
        so there is no event to await: this re-reads it every REQUEST_POLL seconds.
        """
        timeout = scaled(timeout)  # --time-scale
        deadline = time.monotonic() + timeout
        while True:
            for request in self.requests():
                if predicate(request):
                    return request
            if time.monotonic() >= deadline:
                seen = "\n".join(f"  {r}" for r in self.requests()) or "  (none)"
                raise TimeoutError(
                    f"no matching request in {self.log_path} within {timeout:g}s; seen:\n{seen}"
                )
            time.sleep(REQUEST_POLL)  # noqa: sleep-ok - a log file in a host (maybe a VM) has no event


# --------------------------------------------------------------------------- SOCKS5


def start_recording(
    host: Host,
    addr: str,
    port: int,
    *,
    user: str | None = None,
    password: str | None = None,
    faults: Sequence[str] = (),
    address_map: Sequence[str] = (),
    unreachable: Sequence[str] = (),
    name: str | None = None,
) -> RecordingSocks5:
    """Start :mod:`harness.peers.recording` in ``host`` on ``addr:port``.

    ``faults`` are ``--fault`` specs (``"refuse"``, ``"delay:200"``, ``"drop-after:1000"``,
    ``"close-udp"``); ``address_map`` are ``--map CIDR=ADDR`` specs and ``unreachable``
    ``--unreachable CIDR`` ones (the single-host topology).
    """
    name = name or _unique("recording-socks5")
    log_path = _workfile(host, f"{name}.jsonl")
    argv = [
        host_python(host),
        "-m",
        "harness.peers.recording",
        "--listen",
        f"{_bracket(addr)}:{port}",
        "--log",
        str(log_path),
    ]
    if user is not None:
        argv += ["--user", user, "--password", password or ""]
    for spec in faults:
        argv += ["--fault", spec]
    for spec in address_map:
        argv += ["--map", spec]
    for cidr in unreachable:
        argv += ["--unreachable", cidr]
    process = host.spawn(argv, name=name, ready=LogLine(READY_REGEX))
    return RecordingSocks5(
        kind="recording",
        host=host,
        address=addr,
        port=port,
        process=process,
        username=user,
        password=password,
        supports_udp=True,
        log_path=log_path,
    )


def start_microsocks(
    host: Host,
    addr: str,
    port: int,
    user: str | None = None,
    password: str | None = None,
    *,
    name: str | None = None,
) -> Socks5Server:
    """Debian's microsocks (CONNECT only; no UDP ASSOCIATE)."""
    binary = require_tool(host, "microsocks")
    argv = [binary, "-i", addr, "-p", str(port)]
    if user is not None:
        argv += ["-u", user, "-P", password or ""]
    process = host.spawn(argv, name=name or _unique("microsocks"), ready=TcpListening(port))
    return Socks5Server(
        kind="microsocks",
        host=host,
        address=addr,
        port=port,
        process=process,
        username=user,
        password=password,
        supports_udp=False,
    )


def start_danted(
    host: Host,
    addr: str,
    port: int,
    *,
    external: Sequence[str] | None = None,
    extra_addrs: Sequence[str] = (),
    user: str | None = None,
    password: str | None = None,
    name: str | None = None,
) -> Socks5Server:
    """Dante's danted (CONNECT + UDP ASSOCIATE) listening on ``addr:port``.

    ``extra_addrs`` adds internal addresses on the same port (a dual-stack proxy).
    ``external`` defaults to every non-loopback interface of the host. With ``user`` the
    ``username`` method is used: that user must exist in the host's password database
    with ``password`` (danted checks the system, not its config); otherwise the test is
    skipped rather than failing on a setup it cannot fix.
    """
    binary = require_tool(host, "danted")
    if user is not None:
        found = host.run([tool("getent"), "passwd", user], timeout=10.0)
        if not found.ok:
            pytest.skip(f"danted username auth needs system user {user!r} in host {host.name}")
    if external is None:
        external = [i for i in host.interfaces() if i != "lo"]
    name = name or _unique("danted")
    conf = _workfile(host, f"{name}.conf")
    internal = [(a, port) for a in (addr, *extra_addrs)]
    host.write_file(conf, danted_config(internal, external, username_auth=user is not None))
    process = host.spawn([binary, "-f", str(conf)], name=name, ready=TcpListening(port))
    return Socks5Server(
        kind="danted",
        host=host,
        address=addr,
        port=port,
        process=process,
        username=user,
        password=password,
        supports_udp=True,
    )


def sshd_config(key_dir: Path, listen: str, port: int) -> str:
    """An sshd_config for a throwaway daemon: key login only, forwarding allowed."""
    return "\n".join(
        [
            f"ListenAddress {_bracket(listen)}:{port}",
            f"HostKey {key_dir / 'host_key'}",
            f"AuthorizedKeysFile {key_dir / 'authorized_keys'}",
            "PidFile none",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AllowTcpForwarding yes",
            "",
        ]
    )


def start_ssh_dynamic(
    host: Host,
    addr: str,
    port: int,
    *,
    sshd_port: int = SSHD_PORT,
    name: str | None = None,
) -> Socks5Server:
    """``ssh -N -D addr:port`` to an sshd on the proxy host's own loopback.

    Skips when openssh-server is not installed in the host. The sshd and its keys are
    throwaway: made in the host's log dir, removed with the host.
    """
    sshd = require_tool(host, "sshd")
    ssh = require_tool(host, "ssh")
    keygen = require_tool(host, "ssh-keygen")
    name = name or _unique("ssh-dynamic")
    key_dir = _workfile(host, f"{name}-keys")
    host.run([tool("mkdir"), "-p", str(key_dir), "/run/sshd"], check=True, timeout=10.0)
    for key in ("host_key", "client_key"):
        host.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key_dir / key)],
            check=True,
            timeout=30.0,
        )
    host.run(
        [tool("cp"), str(key_dir / "client_key.pub"), str(key_dir / "authorized_keys")],
        check=True,
        timeout=10.0,
    )
    conf = key_dir / "sshd_config"
    host.write_file(conf, sshd_config(key_dir, "127.0.0.1", sshd_port))
    daemon = host.spawn(
        [sshd, "-D", "-e", "-f", str(conf)], name=f"{name}-sshd", ready=TcpListening(sshd_port)
    )
    user = host.run([tool("id"), "-un"], check=True, timeout=10.0).stdout.strip()
    argv = [
        ssh,
        "-N",
        "-D",
        f"{_bracket(addr)}:{port}",
        "-i",
        str(key_dir / "client_key"),
        "-p",
        str(sshd_port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        f"{user}@127.0.0.1",
    ]
    try:
        client = host.spawn(argv, name=name, ready=TcpListening(port))
    except BaseException:
        daemon.stop()
        raise
    return Socks5Server(
        kind="ssh-dynamic",
        host=host,
        address=addr,
        port=port,
        process=client,
        supports_udp=False,
        extra_processes=[daemon],
    )


# --------------------------------------------------------------------------- HTTP CONNECT


@dataclass
class HttpProxyServer(PeerServer):
    """An HTTP proxy taking CONNECT; ``url`` is ``http://[user:pass@]host:port``."""

    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return self.url_for("http", self.username, self.password)


def tinyproxy_config(
    addr: str, port: int, *, user: str | None = None, password: str | None = None
) -> str:
    """A tinyproxy.conf: CONNECT to any port from anyone, Basic auth when ``user`` is set.

    No ``ConnectPort`` line means every port may be CONNECTed to (tinyproxy 1.11); no
    ``LogFile`` or ``Syslog`` with ``-d`` sends the log to stderr (the process log).
    """
    lines = [
        "User nobody",
        "Group nogroup",
        f"Listen {addr}",
        f"Port {port}",
        "Timeout 600",
        "MaxClients 512",
        "LogLevel Connect",
        "Allow 0.0.0.0/0",
        "Allow ::/0",
    ]
    if user is not None:
        lines.append(f"BasicAuth {user} {password or ''}")
    return "\n".join(lines) + "\n"


def start_tinyproxy(
    host: Host,
    addr: str,
    port: int,
    *,
    user: str | None = None,
    password: str | None = None,
    name: str | None = None,
) -> HttpProxyServer:
    """Debian's tinyproxy (HTTP CONNECT; answers wrong credentials with 401, none with 407).

    Its config grammar takes only ``[-A-Za-z0-9._]`` in ``user`` and ``password``.
    """
    binary = require_tool(host, "tinyproxy")
    name = name or _unique("tinyproxy")
    conf = _workfile(host, f"{name}.conf")
    host.write_file(conf, tinyproxy_config(addr, port, user=user, password=password))
    process = host.spawn([binary, "-d", "-c", str(conf)], name=name, ready=TcpListening(port))
    return HttpProxyServer(
        kind="tinyproxy",
        host=host,
        address=addr,
        port=port,
        process=process,
        username=user,
        password=password,
    )


# --------------------------------------------------------------------------- targets


def _start_target(
    host: Host, kind: str, listens: Sequence[tuple[str, int]], name: str | None
) -> PeerServer:
    name = name or _unique(kind)
    log_path = _workfile(host, f"{name}.jsonl")
    argv = [host_python(host), "-m", "harness.peers.targets", kind, "--log", str(log_path)]
    for a, p in listens:
        argv += ["--listen", f"{_bracket(a)}:{p}"]
    process = host.spawn(argv, name=name, ready=LogLine(READY_REGEX))
    addr, port = listens[0]
    return PeerServer(kind=kind, host=host, address=addr, port=port, process=process)


def start_tcp_echo(host: Host, addr: str, port: int, *, name: str | None = None) -> PeerServer:
    """TCP echo that also echoes the half-close (FIN after the last byte)."""
    return _start_target(host, "tcp-echo", [(addr, port)], name)


def start_udp_echo(host: Host, addr: str, port: int, *, name: str | None = None) -> PeerServer:
    return _start_target(host, "udp-echo", [(addr, port)], name)


def start_tcp_data(host: Host, addr: str, port: int, *, name: str | None = None) -> PeerServer:
    """The sink/source server of :mod:`harness.peers.targets` (SINK, SOURCE, DUPLEX)."""
    return _start_target(host, "tcp-data", [(addr, port)], name)


def nginx_config(root: str, addr: str, port: int, workdir: Path) -> str:
    """A foreground, single-process nginx serving ``root`` statically; all paths private."""
    return "\n".join(
        [
            "daemon off;",
            "master_process off;",
            "worker_processes 1;",
            f"pid {workdir / 'nginx.pid'};",
            f"error_log {workdir / 'nginx-error.log'} info;",
            "events { worker_connections 256; }",
            "http {",
            f"  access_log {workdir / 'nginx-access.log'};",
            f"  client_body_temp_path {workdir / 'body'};",
            f"  proxy_temp_path {workdir / 'proxy'};",
            f"  fastcgi_temp_path {workdir / 'fastcgi'};",
            f"  uwsgi_temp_path {workdir / 'uwsgi'};",
            f"  scgi_temp_path {workdir / 'scgi'};",
            "  default_type application/octet-stream;",
            "  sendfile on;",
            f"  server {{ listen {_bracket(addr)}:{port}; root {root}; }}",
            "}",
            "",
        ]
    )


def start_http_server(
    host: Host,
    addr: str,
    port: int,
    root: str | Path,
    *,
    engine: str = "python",
    name: str | None = None,
) -> PeerServer:
    """Static files from ``root`` over HTTP: ``engine`` "python" (http.server) or "nginx".

    nginx is the fast one (sendfile) for large transfers; http.server needs nothing.
    """
    name = name or _unique(f"http-{engine}")
    if engine == "python":
        argv = [
            host_python(host),
            "-m",
            "http.server",
            "--bind",
            addr,
            "--directory",
            str(root),
            str(port),
        ]
    elif engine == "nginx":
        binary = require_tool(host, "nginx")
        workdir = _workfile(host, f"{name}.d")
        host.run([tool("mkdir"), "-p", str(workdir)], check=True, timeout=10.0)
        conf = workdir / "nginx.conf"
        host.write_file(conf, nginx_config(str(root), addr, port, workdir))
        argv = [binary, "-c", str(conf), "-e", str(workdir / "nginx-error.log")]
    else:
        raise ValueError(f"engine must be 'python' or 'nginx', not {engine!r}")
    process = host.spawn(argv, name=name, ready=TcpListening(port))
    return PeerServer(kind=f"http-{engine}", host=host, address=addr, port=port, process=process)


def dnsmasq_argv(
    binary: str, addr: str, records: Mapping[str, str | Sequence[str]], port: int = DNS_PORT
) -> list[str]:
    """dnsmasq answering only ``records`` (name -> address(es)), bound to ``addr``.

    No upstream, no resolv.conf, no /etc/hosts, no system config file: the answers are
    exactly what the test declared, whatever the machine has.
    """
    argv = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--listen-address={addr}",
        f"--port={port}",
        "--log-queries",
        "--log-facility=-",
        "--pid-file=",
        "--user=root",
    ]
    for domain, answers in records.items():
        for answer in [answers] if isinstance(answers, str) else answers:
            ipaddress.ip_address(answer)  # a typo here would silently become NXDOMAIN
            argv.append(f"--address=/{domain}/{answer}")
    return argv


def start_dnsmasq(
    host: Host,
    addr: str,
    records: Mapping[str, str | Sequence[str]],
    *,
    port: int = DNS_PORT,
    name: str | None = None,
) -> PeerServer:
    """dnsmasq with fixed records, e.g. ``{"example.test": ["10.201.0.2", "fd00:201::2"]}``."""
    binary = require_tool(host, "dnsmasq")
    process = host.spawn(
        dnsmasq_argv(binary, addr, records, port),
        name=name or _unique("dnsmasq"),
        ready=UdpListening(port),
    )
    return PeerServer(kind="dnsmasq", host=host, address=addr, port=port, process=process)


def describe(server: PeerServer) -> str:
    """One line for reports: kind, endpoint, pid."""
    return f"{server.kind} on {_bracket(server.address)}:{server.port} (pid {server.process.pid})"


__all__ = [
    "HttpProxyServer",
    "PeerServer",
    "RecordingSocks5",
    "Socks5Server",
    "danted_config",
    "describe",
    "dnsmasq_argv",
    "host_python",
    "nginx_config",
    "require_tool",
    "sshd_config",
    "start_danted",
    "start_dnsmasq",
    "start_http_server",
    "start_microsocks",
    "start_recording",
    "start_ssh_dynamic",
    "start_tcp_data",
    "start_tcp_echo",
    "start_tinyproxy",
    "start_udp_echo",
    "tinyproxy_config",
    "which",
]
