"""An adapter made of command lines: certify a tun2socks without writing Python.

A user's implementation is a binary with its own flags or its own config file. The
adapter starts it from a command template (``--tun2socks-command``) and, if it is
configured by a file, renders a config template (``--tun2socks-config-template``) into
``{config}`` first. Both are filled with the same placeholders, :data:`PLACEHOLDERS`;
only those exact tokens are substituted and every other brace is left as written, so a
JSON or YAML config works unchanged. A ``{word}`` that is not a placeholder is a usage
error: it is far more likely a typo (``{proxyurl}``) than a literal the user meant.

Readiness (``--tun2socks-ready``): ``link`` (default: the device exists in the client
host -- the one thing every tun2socks does, whatever it prints), ``log:REGEX`` (a line
of its output) or ``tcp:PORT`` (a TCP listener in the host). By default the
implementation creates, addresses and raises its device; with
``--tun2socks-harness-configures-device`` it only creates it and the harness then sets
the MTU, adds the addresses and brings it up.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.hosts import Host, LinkExists, LogLine, Process, Readiness, TcpListening
from harness.impls.base import ProxyEndpoint, Tun2Socks, configure_device
from ztun.tools import tool

PLACEHOLDERS = (
    "device",
    "mtu",
    "ipv4",
    "ipv4_cidr",
    "ipv6",
    "ipv6_cidr",
    "proxy_url",
    "proxy_host",
    "proxy_port",
    "proxy_user",
    "proxy_pass",
    "config",
    "workdir",
)
"""The only tokens substituted, in templates of commands and of config files."""

TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""``{word}``: a placeholder if ``word`` is in PLACEHOLDERS, a usage error otherwise.
A brace followed by anything else (``{"log": ...``, ``{ a: 1 }``, ``{}``) is literal."""

START_TIMEOUT = 20.0
VERSION_TIMEOUT = 15.0
DEFAULT_NAME = "command"


class TemplateError(ValueError):
    """A template names a token that is not a placeholder (a usage error: exit 2)."""


def unknown_tokens(text: str) -> list[str]:
    """The ``{word}`` tokens of ``text`` that are not placeholders, in order, once each."""
    return list(dict.fromkeys(m for m in TOKEN.findall(text) if m not in PLACEHOLDERS))


def check_template(text: str, *, what: str) -> None:
    """Raise :class:`TemplateError` naming the unknown tokens and the known ones."""
    unknown = unknown_tokens(text)
    if unknown:
        names = ", ".join("{" + t + "}" for t in unknown)
        known = " ".join("{" + p + "}" for p in PLACEHOLDERS)
        raise TemplateError(f"{what}: unknown placeholder {names} (known: {known})")


def render(text: str, values: Mapping[str, str]) -> str:
    """Substitute the placeholders of ``text``; every other character stays as it is."""
    check_template(text, what="template")
    return TOKEN.sub(lambda m: values[m.group(1)], text)


def placeholder_values(
    *,
    device: str,
    addresses: Sequence[str],
    proxy: ProxyEndpoint,
    proxy_url: str,
    mtu: int,
    config: str,
    workdir: str,
) -> dict[str, str]:
    """Every placeholder's value for one start (an absent family or user gives "")."""
    values = dict.fromkeys(PLACEHOLDERS, "")
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        family = f"ipv{iface.version}"
        if not values[family]:  # the first address of a family is the device's own
            values[family] = str(iface.ip)
            values[f"{family}_cidr"] = str(iface)
    values.update(
        device=device,
        mtu=str(mtu),
        proxy_url=proxy_url,
        proxy_host=proxy.host,
        proxy_port=str(proxy.port),
        proxy_user=proxy.username or "",
        proxy_pass=proxy.password or "",
        config=config,
        workdir=workdir,
    )
    return values


def parse_ready(spec: str) -> Readiness | None:
    """``link`` -> None (the device, known only at start), ``log:REGEX``, ``tcp:PORT``.

    Raises ValueError with the accepted forms.
    """
    kind, sep, arg = spec.partition(":")
    if spec == "link":
        return None
    if kind == "log" and sep and arg:
        try:
            re.compile(arg)
        except re.error as exc:
            raise ValueError(f"--tun2socks-ready {spec!r}: bad regular expression: {exc}") from None
        return LogLine(arg)
    if kind == "tcp" and sep and arg.isdigit() and 0 < int(arg) < 65536:
        return TcpListening(int(arg))
    raise ValueError(f"--tun2socks-ready {spec!r}: expected link, log:REGEX or tcp:PORT")


@dataclass(frozen=True)
class CommandSpec:
    """What the user gave on the command line, validated (see :meth:`parse`)."""

    command: tuple[str, ...]
    config_template: str | None = None
    ready: str = "link"
    name: str | None = None
    version_command: tuple[str, ...] = ()
    harness_configures_device: bool = False

    @classmethod
    def parse(
        cls,
        command: str,
        *,
        config_template: str | Path | None = None,
        ready: str = "link",
        name: str | None = None,
        version_command: str | None = None,
        harness_configures_device: bool = False,
    ) -> CommandSpec:
        """Split and check everything now, so a mistake is a usage error before any test.

        Raises ValueError (TemplateError for an unknown placeholder) saying what is wrong.
        """
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise ValueError(f"--tun2socks-command {command!r}: {exc}") from None
        if not argv:
            raise ValueError("--tun2socks-command is empty")
        check_template(command, what="--tun2socks-command")
        template_text = None
        if config_template is not None:
            try:
                template_text = Path(config_template).read_text()
            except OSError as exc:
                raise ValueError(f"--tun2socks-config-template: {exc}") from None
            check_template(template_text, what=f"--tun2socks-config-template {config_template}")
        parse_ready(ready)
        version: tuple[str, ...] = ()
        if version_command:
            try:
                version = tuple(shlex.split(version_command))
            except ValueError as exc:
                raise ValueError(f"--tun2socks-version-command: {exc}") from None
            check_template(version_command, what="--tun2socks-version-command")
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]{1,40}", name):
            raise ValueError(f"--tun2socks-name {name!r}: use 1-40 of A-Z a-z 0-9 _ . + -")
        return cls(
            command=argv,
            config_template=template_text,
            ready=ready,
            name=name,
            version_command=version,
            harness_configures_device=harness_configures_device,
        )

    @property
    def display_name(self) -> str:
        return self.name or DEFAULT_NAME


class CommandTemplate(Tun2Socks):
    """The adapter for an implementation given as command (and config) templates."""

    name = DEFAULT_NAME

    def __init__(self, spec: CommandSpec) -> None:
        self.spec = spec
        self.name = spec.display_name

    def unavailable_reason(self, host: Host) -> str | None:
        program = self.spec.command[0]
        if TOKEN.search(program):
            return None  # known only at start ({workdir}/bin...): a failure then says why
        found = host.run(
            [tool("sh"), "-c", 'command -v "$1"', "sh", program], timeout=VERSION_TIMEOUT
        )
        if not found.ok:
            return f"{program} not found in host {host.name} (--tun2socks-command)"
        return None

    def version(self, host: Host) -> str:
        if not self.spec.version_command:
            return f"{self.name} (no --tun2socks-version-command)"
        result = host.run(list(self.spec.version_command), timeout=VERSION_TIMEOUT)
        lines = (result.stdout or result.stderr).strip().splitlines()
        if result.ok and lines:
            return lines[0].strip()
        return f"{self.name} (version command exited {result.returncode})"

    def launch(
        self,
        host: Host,
        *,
        device: str,
        addresses: tuple[str, ...],
        proxy: ProxyEndpoint,
        proxy_url: str,
        mtu: int,
    ) -> tuple[Process, Path | None]:
        workdir = Path(host.log_dir) / f"{self.name}-{device}"
        host.run([tool("mkdir"), "-p", str(workdir)], check=True, timeout=VERSION_TIMEOUT)
        config = workdir / "config" if self.spec.config_template is not None else None
        values = placeholder_values(
            device=device,
            addresses=addresses,
            proxy=proxy,
            proxy_url=proxy_url,
            mtu=mtu,
            config=str(config) if config is not None else "",
            workdir=str(workdir),
        )
        if config is not None and self.spec.config_template is not None:
            host.write_file(config, render(self.spec.config_template, values))
        # Split first, substitute per word: a value with a space stays one argument.
        argv = [render(word, values) for word in self.spec.command]
        ready = parse_ready(self.spec.ready) or LinkExists(device)
        process = host.spawn(argv, name=f"{self.name}-{device}", ready=ready, timeout=START_TIMEOUT)
        if self.spec.harness_configures_device:
            try:
                if not isinstance(ready, LinkExists):  # the device may come after the line
                    process.wait_for(LinkExists(device), timeout=START_TIMEOUT)
                configure_device(host, device, addresses, mtu)
            except BaseException:
                process.stop()
                raise
        return process, config
