"""The whole ztun configuration: one model for ``--config FILE`` and the CLI flags.

The TOML file and the flags feed the same validator: flags are applied on top of the file
as dotted-key overrides (``{"route.auto": True, "dns.mode": "fake-ip"}``), so a flag always
wins and both are checked by the same code with the same messages.  Errors raise
:class:`ConfigError` naming the file and line (or ``<command line>``) and the key.

Example::

    proxy = "socks5://127.0.0.1:1080"
    device = "tun://ztun0"
    addresses = ["172.19.0.1/30", "fdfe:dcba:9876::1/126"]
    interface = "eth0"              # outbound sockets bind here (SO_BINDTODEVICE)
    default_outbound = "default"    # a proxy, a group, "direct" or "reject"
    log_level = "info"              # debug | info | warning | error
    log_file = "/var/log/ztun.log"  # reopened on SIGUSR1 (default: stderr)
    log_format = "text"             # text | json
    log_flows = false               # one line per closed flow
    control = "/run/ztun/ztun0.sock"  # default: per device (docs/control.md)
    metrics = "127.0.0.1:9100"      # Prometheus text at /metrics (default: off)
    pid_file = "/run/ztun.pid"
    icmp = "local"                  # local | direct | reject: what a ping gets
    max_udp_sessions = 0            # UDP flows holding an association (0: no limit;
                                    #   default: from the open-files limit)

    [route]
    auto = true
    strict = true
    exclude = ["192.168.0.0/16"]

    [dns]
    mode = "fake-ip"                # off | hijack | fake-ip | remote
    upstream = "1.1.1.1:53"         # remote mode only; fake-ip forwards nothing (MX, TXT: no data)

    [[rules]]
    domain_suffix = ["lan", "corp.example"]
    outbound = "direct"

    [[rules]]
    network = "udp"
    port = ["443", "8000-8100"]
    outbound = "reject"

Proxies and groups (``[[proxies]]``, ``[groups.NAME]``, ``fail_open``) are parsed by
:mod:`ztun.rules.proxies`; docs/config.md describes them for users.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ztun.dns.fakeip import DEFAULT_V4_RANGE, DEFAULT_V6_RANGE
from ztun.dns.mode import DEFAULT_FAKE_TTL, DnsMode
from ztun.dns.state import DEFAULT_STATE_PATH
from ztun.outbound.target import Target
from ztun.route.model import RESERVED_TABLES
from ztun.route.plan import (
    DEFAULT_FWMARK,
    DEFAULT_PRIORITY,
    DEFAULT_TABLE,
    AutoRouteConfig,
)
from ztun.rules import proxies as _proxies
from ztun.rules.errors import (
    COMMAND_LINE,
    ConfigError,
    KeyPath,
    format_key,
    kind_name,
    locate,
)
from ztun.rules.proxies import (
    DEFAULT_GROUP,
    LEGACY_ACTIONS,
    GroupSpec,
    ProxySpec,
    builtin_default,
    default_group,
    implicit_proxies,
)
from ztun.rules.rules import Action, Rule, RuleSet
from ztun.tun.url import device_url_problem

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DEVICE = "tun://ztun0"
DEFAULT_ADDRESSES: tuple[IPInterface, ...] = (
    ipaddress.IPv4Interface("172.19.0.1/30"),
    ipaddress.IPv6Interface("fdfe:dcba:9876::1/126"),
)
DEFAULT_MTU = 1500
MIN_MTU_V4 = 576  # RFC 791
MIN_MTU_V6 = 1280  # RFC 8200 5
MAX_MTU = 65535
IFNAMSIZ = 16  # linux/if.h, including the NUL
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ICMP_MODES = ("local", "direct", "reject")  # ztun.stack.IcmpMode
DNS_PORT = 53
MAX_SNIFF_TIMEOUT = 10.0
DEFAULT_SNIFF_TIMEOUT = 0.3

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """``[route]``: auto-route (see ztun.route.plan for what each option does)."""

    auto: bool = False
    strict: bool = False
    include: tuple[IPNetwork, ...] = ()
    exclude: tuple[IPNetwork, ...] = ()
    table: int = DEFAULT_TABLE
    fwmark: int = DEFAULT_FWMARK
    priority: int = DEFAULT_PRIORITY


@dataclass(frozen=True, slots=True)
class DnsOptions:
    """``[dns]``: how DNS arriving on the TUN is answered."""

    mode: DnsMode = DnsMode.OFF
    upstream: tuple[str, int] | None = None
    fake_ip_range: ipaddress.IPv4Network | None = DEFAULT_V4_RANGE
    fake_ip6_range: ipaddress.IPv6Network | None = DEFAULT_V6_RANGE
    fake_ip_ttl: int = DEFAULT_FAKE_TTL
    state_file: Path = DEFAULT_STATE_PATH


# Off by default: a sniff peeks at every new connection (and waits up to `timeout` for
# server-first protocols); turn it on for domain rules or remote resolution.
SNIFF_BY_DEFAULT = False


@dataclass(frozen=True, slots=True)
class SniffOptions:
    """``[sniff]``: read TLS SNI / HTTP Host / QUIC SNI from a flow's first bytes."""

    enabled: bool = SNIFF_BY_DEFAULT
    timeout: float = DEFAULT_SNIFF_TIMEOUT


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``ztun run`` needs, validated.

    ``proxy_urls`` are the ``proxy`` key's URLs (every ``--proxy``); ``proxies`` and
    ``groups`` are the ``[[proxies]]`` and ``[groups.NAME]`` entries as written.
    ``all_proxies()`` and ``all_groups()`` add the implicit ones (``proxy1``... and the
    group ``default``).
    """

    proxy_urls: tuple[str, ...] = ()
    device: str = DEFAULT_DEVICE
    addresses: tuple[IPInterface, ...] = DEFAULT_ADDRESSES
    mtu: int = DEFAULT_MTU
    interface: str | None = None
    log_level: str = "info"
    log_file: Path | None = None  # None: stderr
    log_format: str = "text"  # text | json
    log_flows: bool = False  # one line per closed flow
    control: str | None = None  # None: the per-device default (ztun.control.paths)
    metrics: tuple[str, int] | None = None  # Prometheus endpoint HOST:PORT
    pid_file: Path | None = None
    icmp: str = "local"  # what an echo request gets: one of ICMP_MODES
    # UDP flows holding an association (0: no limit; None: from the open-files limit,
    # ztun.limits; LRU)
    max_udp_sessions: int | None = None
    default_outbound: str = DEFAULT_GROUP
    fail_open: bool = False
    proxies: tuple[ProxySpec, ...] = ()
    groups: tuple[GroupSpec, ...] = ()
    route: RouteOptions = field(default_factory=RouteOptions)
    dns: DnsOptions = field(default_factory=DnsOptions)
    sniff: SniffOptions = field(default_factory=SniffOptions)
    rules: tuple[Rule, ...] = ()
    source: str | None = None

    @property
    def device_name(self) -> str:
        """The interface name in ``tun://NAME`` (or a bare NAME)."""
        return self.device.removeprefix("tun://")

    @property
    def proxy(self) -> str | None:
        """The first URL of the ``proxy`` key (None: not given)."""
        return self.proxy_urls[0] if self.proxy_urls else None

    @property
    def default_action(self) -> Action:
        """What ``default_outbound`` is, in the legacy terms (a proxy or group: PROXY)."""
        return Action.of(self.default_outbound)

    def all_proxies(self) -> tuple[ProxySpec, ...]:
        """Every named proxy: ``proxy1``... from the ``proxy`` key, then ``[[proxies]]``."""
        return implicit_proxies(self.proxy_urls, self.proxies) + self.proxies

    def all_groups(self) -> tuple[GroupSpec, ...]:
        """Every group: ``default`` first (unless it is an alias), then ``[groups.NAME]``."""
        if self.default_alias is not None:
            return self.groups
        implicit = implicit_proxies(self.proxy_urls, self.proxies)
        return (default_group(implicit, self.proxies), *self.groups)

    @property
    def default_alias(self) -> str | None:
        """``direct`` / ``reject`` when ``proxy = "direct://"`` / ``"reject://"``: then the
        name ``default`` means that outbound, not a group."""
        return builtin_default(self.proxy_urls)

    def default_outbound_summary(self) -> str:
        """What new flows use when no rule matches, for the start-up line (redacted):
        ``proxy2(socks5://h:1080)``, ``default(failover:proxy1=socks5://h:1080,...)`` for
        a group, or ``direct`` / ``reject``."""
        from ztun.outbound.url import redact

        name = self.default_outbound
        if name == DEFAULT_GROUP and self.default_alias is not None:
            return self.default_alias
        urls = {p.name: redact(p.url) for p in self.all_proxies()}
        if name in urls:
            return f"{name}({urls[name]})"
        group = next((g for g in self.all_groups() if g.name == name), None)
        if group is None:
            return name  # direct or reject
        members = ",".join(f"{m}={urls[m]}" for m in group.members)
        return f"{name}({group.policy.value}:{members})"

    def rule_set(self) -> RuleSet:
        """The compiled rules with the default outbound."""
        return RuleSet(self.rules, self.default_outbound)

    def auto_route_config(
        self, proxy_addresses: tuple[IPAddress, ...], device: str | None = None
    ) -> AutoRouteConfig:
        """The planner's input; ``proxy_addresses`` = the proxy host, resolved; ``device``
        = the interface the OS gave (macOS turns ``tun://utun`` into utunN), default the
        configured name."""
        return AutoRouteConfig(
            device=device or self.device_name,
            tun_addresses=self.addresses,
            proxy_addresses=proxy_addresses,
            include=self.route.include,
            exclude=self.route.exclude,
            strict=self.route.strict,
            capture_dns=self.dns.mode is not DnsMode.OFF,
            table=self.route.table,
            fwmark=self.route.fwmark,
            priority=self.route.priority,
        )


# -- loading ---------------------------------------------------------------------------


def load_config(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    text: str | None = None,
) -> Config:
    """Read ``path`` (TOML; None: defaults only), apply ``overrides``, validate.

    ``overrides`` maps dotted keys to values already typed as TOML would type them
    (``{"proxy": "socks5://h:1080", "route.exclude": ["10.0.0.0/8"]}``); a list replaces
    the file's list.  ``text``: the file's content, already read (the parent of workers
    reads it once for all of them); ``path`` then only names it.  Raises ConfigError.
    """
    file = COMMAND_LINE
    data: dict[str, Any] = {}
    if path is not None:
        file = str(path)
        if text is None:
            text = read_config_text(file)
        data = parse_toml(text, file)
    text = text or ""
    overridden: set[KeyPath] = set()
    for dotted, value in (overrides or {}).items():
        keys = tuple(dotted.split("."))
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(COMMAND_LINE, None, dotted, f"{k} is not a table")
            node = child
        node[keys[-1]] = value
        overridden.add(keys)
    return _Builder(file, text, overridden).build(data)


def read_config_text(file: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, None, "", f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(file, None, "", "not UTF-8 text") from exc


def parse_toml(text: str, file: str) -> dict[str, Any]:
    """tomllib with the error turned into a ConfigError carrying the line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = None
        marker = message.rfind("(at line ")
        if marker >= 0:
            try:
                line = int(message[marker + 9 :].split(",")[0])
            except ValueError:
                line = None
            message = message[:marker].strip()
        raise ConfigError(file, line, "", f"TOML syntax: {message}") from exc


class _Builder:
    """Validates the raw dict, raising ConfigError with the right file/line/key."""

    def __init__(self, file: str, text: str, overridden: set[KeyPath]) -> None:
        self.file, self.text, self.overridden = file, text, overridden

    def error(self, path: KeyPath, message: str) -> ConfigError:
        if any(path[: len(o)] == o for o in self.overridden):
            return ConfigError(COMMAND_LINE, None, format_key(path), message)
        return ConfigError(self.file, locate(self.text, path), format_key(path), message)

    def origin(self, path: KeyPath) -> str:
        """``file:line`` of ``path``, for logs that point back at the config."""
        return f"{self.file}:{locate(self.text, path) or '?'}"

    # typed getters --------------------------------------------------------------------

    def take(self, table: dict[str, Any], path: KeyPath, key: str, kind: type[T], default: T) -> T:
        if key not in table:
            return default
        value = table.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(
                (*path, key), f"must be {kind_name(kind)}, not {kind_name(type(value))}"
            )
        # TOML has nan and inf; nan passes every `<` bound check (and made probing spin).
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error((*path, key), f"must be a finite number, not {value}")
        return value

    def take_opt(self, table: dict[str, Any], path: KeyPath, key: str, kind: type[T]) -> T | None:
        if key not in table:
            return None
        return self.take(table, path, key, kind, kind())

    def path_opt(self, table: dict[str, Any], key: str, otherwise: str) -> str | None:
        """A top-level path key: absent is None (`otherwise`), empty is an error -- an
        empty path opens nothing, and was found out only once ztun was up."""
        path = self.take_opt(table, (), key, str)
        if path is not None and not path:
            raise self.error((key,), f"must be a path (or leave it out for {otherwise})")
        return path

    def items(
        self, table: dict[str, Any], path: KeyPath, key: str, convert: Callable[[Any, KeyPath], T]
    ) -> tuple[T, ...]:
        """A list (or a single value, as a one-item list), each item converted."""
        if key not in table:
            return ()
        raw = table.pop(key)
        values = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, list) and not raw:
            return ()
        return tuple(
            convert(v, (*path, key, i) if isinstance(raw, list) else (*path, key))
            for i, v in enumerate(values)
        )

    def section(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.pop(key, {})
        if not isinstance(value, dict):
            raise self.error((key,), "must be a table")
        return dict(value)

    def no_leftovers(self, table: dict[str, Any], path: KeyPath, known: tuple[str, ...]) -> None:
        for key in table:
            raise self.error((*path, key), f"unknown key (known: {', '.join(known)})")

    # converters -----------------------------------------------------------------------

    def network(self, value: Any, path: KeyPath) -> IPNetwork:
        if not isinstance(value, str):
            raise self.error(path, "must be a CIDR string like 10.0.0.0/8")
        try:
            return ipaddress.ip_network(value)
        except ValueError as exc:
            raise self.error(path, f"{value!r} is not a CIDR ({exc})") from exc

    def interface_address(self, value: Any, path: KeyPath) -> IPInterface:
        if not isinstance(value, str) or "/" not in value:
            raise self.error(path, "must be ADDRESS/PREFIX like 172.19.0.1/30")
        try:
            return ipaddress.ip_interface(value)
        except ValueError as exc:
            raise self.error(path, f"{value!r} is not an address with prefix ({exc})") from exc

    def port_range(self, value: Any, path: KeyPath) -> tuple[int, int]:
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        lo_s, sep, hi_s = text.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise self.error(path, f"{value!r} is not a port or a range like 8000-8100") from None
        if not 0 < lo <= hi <= 0xFFFF:
            raise self.error(path, f"{value!r}: ports are 1-65535, low before high")
        return lo, hi

    def choice(self, value: Any, path: KeyPath, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.error(path, f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    def domain(self, value: Any, path: KeyPath) -> str:
        if not isinstance(value, str) or not value.strip(". "):
            raise self.error(path, "must be a non-empty domain string")
        return value.strip().strip(".").lower()

    def host_port(self, value: str, path: KeyPath, default_port: int) -> tuple[str, int]:
        host, port = value, default_port
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise self.error(path, f"{value!r} is not HOST[:PORT]")
                port = self.port_range(rest[1:], path)[0]
        elif value.count(":") == 1:
            host, _, port_s = value.partition(":")
            port = self.port_range(port_s, path)[0]
        if not host:
            raise self.error(path, f"{value!r} has no host")
        try:  # what gets dialled or bound: refused here, not once ztun runs
            Target(host, port)
        except ValueError as exc:
            raise self.error(path, str(exc)) from None
        return host, port

    # sections -------------------------------------------------------------------------

    def build(self, raw: dict[str, Any]) -> Config:
        data = dict(raw)
        route = self.route(self.section(data, "route"))
        dns = self.dns(self.section(data, "dns"))
        sniff = self.sniff(self.section(data, "sniff"))
        proxy_urls = _proxies.parse_proxy_urls(self, data)
        # The implicit proxy1... exist only when the proxy key gives URLs; their names are
        # taken first so a [[proxies]] entry cannot shadow one.
        taken = {f"proxy{i}" for i in range(1, len(proxy_urls) + 1)}
        named = _proxies.parse_proxies(self, data, taken)
        all_named = implicit_proxies(proxy_urls, named) + named
        proxy_names = {p.name for p in all_named}
        taken |= proxy_names
        ipv4_only = {p.name for p in all_named if p.url.lower().startswith("socks4://")}
        groups = _proxies.parse_groups(self, data, proxy_names, taken, ipv4_only)
        known = (*sorted(taken), DEFAULT_GROUP, "direct", "reject")
        fail_open = self.take(data, (), "fail_open", bool, False)
        default_outbound = self.default_outbound(data, known)
        rules_raw = data.pop("rules", [])
        if not isinstance(rules_raw, list):
            raise self.error(("rules",), "must be an array of tables ([[rules]])")
        rules = tuple(self.rule(r, i, known) for i, r in enumerate(rules_raw))

        device = self.take(data, (), "device", str, DEFAULT_DEVICE)
        problem = device_url_problem(device)
        if problem is not None:
            raise self.error(("device",), problem)
        addresses = self.items(data, (), "addresses", self.interface_address) or DEFAULT_ADDRESSES
        mtu = self.take(data, (), "mtu", int, DEFAULT_MTU)
        has_v6 = any(a.version == 6 for a in addresses)
        floor = MIN_MTU_V6 if has_v6 else MIN_MTU_V4
        if not floor <= mtu <= MAX_MTU:
            raise self.error(
                ("mtu",),
                f"{mtu} is outside {floor}-{MAX_MTU}"
                + (" (IPv6 needs at least 1280)" if has_v6 else ""),
            )
        interface = self.take_opt(data, (), "interface", str)
        if interface is not None and not 0 < len(interface) < IFNAMSIZ:
            raise self.error(("interface",), f"{interface!r}: must be 1-{IFNAMSIZ - 1} chars")
        log_level = (
            self.choice(data.pop("log_level", "info"), ("log_level",), LOG_LEVELS)
            if "log_level" in data
            else "info"
        )
        log_file = self.path_opt(data, "log_file", "stderr")
        log_format = (
            self.choice(data.pop("log_format"), ("log_format",), LOG_FORMATS)
            if "log_format" in data
            else "text"
        )
        log_flows = self.take(data, (), "log_flows", bool, False)
        control = self.path_opt(data, "control", "the default")
        metrics_raw = self.take_opt(data, (), "metrics", str)
        metrics = None
        if metrics_raw is not None:
            metrics = self.host_port(metrics_raw, ("metrics",), 0)
            if not metrics[1]:
                raise self.error(
                    ("metrics",), f"{metrics_raw!r} needs HOST:PORT, e.g. 127.0.0.1:9100"
                )
        pid_file = self.path_opt(data, "pid_file", "none")
        icmp = self.choice(data.pop("icmp"), ("icmp",), ICMP_MODES) if "icmp" in data else "local"
        max_udp_sessions = self.take_opt(data, (), "max_udp_sessions", int)
        if max_udp_sessions is not None and max_udp_sessions < 0:
            raise self.error(("max_udp_sessions",), "must be 0 (no limit) or more")
        self.no_leftovers(
            data,
            (),
            (
                "proxy",
                "proxies",
                "groups",
                "default_outbound",
                "fail_open",
                "device",
                "addresses",
                "mtu",
                "interface",
                "log_level",
                "log_file",
                "log_format",
                "log_flows",
                "control",
                "metrics",
                "pid_file",
                "icmp",
                "max_udp_sessions",
                "route",
                "dns",
                "sniff",
                "rules",
            ),
        )
        return Config(
            proxy_urls=proxy_urls,
            device=device,
            addresses=addresses,
            mtu=mtu,
            interface=interface,
            log_level=log_level,
            log_file=Path(log_file) if log_file else None,
            log_format=log_format,
            log_flows=log_flows,
            control=control,
            metrics=metrics,
            pid_file=Path(pid_file) if pid_file else None,
            icmp=icmp,
            max_udp_sessions=max_udp_sessions,
            default_outbound=default_outbound,
            fail_open=fail_open,
            proxies=named,
            groups=groups,
            route=route,
            dns=dns,
            sniff=sniff,
            rules=rules,
            source=None if self.file == COMMAND_LINE else self.file,
        )

    def default_outbound(self, data: dict[str, Any], known: tuple[str, ...]) -> str:
        """``default_outbound = NAME``, or the legacy ``default_action`` (not both)."""
        if "default_outbound" in data and "default_action" in data:
            raise self.error(
                ("default_action",), "give default_outbound or default_action, not both"
            )
        if "default_action" in data:
            action = self.choice(
                data.pop("default_action"), ("default_action",), tuple(LEGACY_ACTIONS)
            )
            return LEGACY_ACTIONS[action]
        if "default_outbound" in data:
            return _proxies.outbound_name(
                self, data.pop("default_outbound"), ("default_outbound",), known
            )
        return DEFAULT_GROUP

    def route(self, t: dict[str, Any]) -> RouteOptions:
        p: KeyPath = ("route",)
        opts = RouteOptions(
            auto=self.take(t, p, "auto", bool, False),
            strict=self.take(t, p, "strict", bool, False),
            include=self.items(t, p, "include", self.network),
            exclude=self.items(t, p, "exclude", self.network),
            table=self.take(t, p, "table", int, DEFAULT_TABLE),
            fwmark=self.take(t, p, "fwmark", int, DEFAULT_FWMARK),
            priority=self.take(t, p, "priority", int, DEFAULT_PRIORITY),
        )
        if opts.table in RESERVED_TABLES or not 0 < opts.table < 2**32:
            raise self.error(
                (*p, "table"),
                f"{opts.table} is reserved or out of range (0/253/254/255 are the kernel's)",
            )
        if not 0 < opts.fwmark < 2**32:
            raise self.error((*p, "fwmark"), "must be a non-zero 32-bit mark")
        if not 4 <= opts.priority <= 32764:
            raise self.error((*p, "priority"), "must be 4-32764 (rules use P-3..P+1)")
        self.no_leftovers(
            t, p, ("auto", "strict", "include", "exclude", "table", "fwmark", "priority")
        )
        return opts

    def dns(self, t: dict[str, Any]) -> DnsOptions:
        p: KeyPath = ("dns",)
        mode = (
            DnsMode(self.choice(t.pop("mode"), (*p, "mode"), tuple(DnsMode)))
            if "mode" in t
            else DnsMode.OFF
        )
        upstream_raw = self.take_opt(t, p, "upstream", str)
        upstream = (
            self.host_port(upstream_raw, (*p, "upstream"), DNS_PORT) if upstream_raw else None
        )
        if mode is DnsMode.REMOTE and upstream is None:
            raise self.error((*p, "mode"), 'remote mode needs dns.upstream (e.g. "1.1.1.1:53")')
        if (
            upstream is not None
            and mode is not DnsMode.REMOTE
            and (*p, "upstream") in self.overridden
        ):
            # --dns-upstream is read only by remote mode: given with another mode it was
            # silently unused. A file may keep its upstream while another mode is active
            # (the example above does; "remote mode only"), so only the flag is refused.
            raise self.error(
                (*p, "upstream"),
                f"is used only by --dns remote (dns mode is {mode.value}); add --dns remote "
                "or drop --dns-upstream",
            )
        v4 = DEFAULT_V4_RANGE
        if "fake_ip_range" in t:
            net = self.network(t.pop("fake_ip_range"), (*p, "fake_ip_range"))
            if not isinstance(net, ipaddress.IPv4Network):
                raise self.error((*p, "fake_ip_range"), "must be an IPv4 range")
            v4 = net
        v6: ipaddress.IPv6Network | None = DEFAULT_V6_RANGE
        if "fake_ip6_range" in t:
            raw = t.pop("fake_ip6_range")
            if raw in ("", False):
                v6 = None
            else:
                net = self.network(raw, (*p, "fake_ip6_range"))
                if not isinstance(net, ipaddress.IPv6Network):
                    raise self.error((*p, "fake_ip6_range"), 'must be an IPv6 range (or "")')
                v6 = net
        ttl = self.take(t, p, "fake_ip_ttl", int, DEFAULT_FAKE_TTL)
        if not 0 <= ttl <= 86400:
            raise self.error((*p, "fake_ip_ttl"), "must be 0-86400 seconds")
        state = self.take(t, p, "state_file", str, str(DEFAULT_STATE_PATH))
        self.no_leftovers(
            t,
            p,
            ("mode", "upstream", "fake_ip_range", "fake_ip6_range", "fake_ip_ttl", "state_file"),
        )
        return DnsOptions(
            mode=mode,
            upstream=upstream,
            fake_ip_range=v4,
            fake_ip6_range=v6,
            fake_ip_ttl=ttl,
            state_file=Path(state),
        )

    def sniff(self, t: dict[str, Any]) -> SniffOptions:
        p: KeyPath = ("sniff",)
        enabled = self.take(t, p, "enabled", bool, SNIFF_BY_DEFAULT)
        timeout = self.take(t, p, "timeout", float, DEFAULT_SNIFF_TIMEOUT)
        if not 0 < timeout <= MAX_SNIFF_TIMEOUT:
            raise self.error((*p, "timeout"), f"must be in (0, {MAX_SNIFF_TIMEOUT}] seconds")
        self.no_leftovers(t, p, ("enabled", "timeout"))
        return SniffOptions(enabled=enabled, timeout=timeout)

    def rule(self, raw: Any, index: int, known: tuple[str, ...]) -> Rule:
        p: KeyPath = ("rules", index)
        if not isinstance(raw, dict):
            raise self.error(p, "each rule must be a table ([[rules]])")
        t = dict(raw)
        if "outbound" in t and "action" in t:
            raise self.error(p, "give outbound or action, not both")
        if "outbound" in t:
            outbound = _proxies.outbound_name(self, t.pop("outbound"), (*p, "outbound"), known)
        elif "action" in t:
            action = self.choice(t.pop("action"), (*p, "action"), tuple(LEGACY_ACTIONS))
            outbound = LEGACY_ACTIONS[action]
        else:
            raise self.error(p, "rule has no outbound (a proxy, a group, direct or reject)")
        networks = frozenset(
            self.items(t, p, "network", lambda v, q: self.choice(v, q, ("tcp", "udp")))
        )
        rule = Rule(
            outbound=outbound,
            domains=frozenset(self.items(t, p, "domain", self.domain)),
            domain_suffixes=frozenset(self.items(t, p, "domain_suffix", self.domain)),
            domain_keywords=tuple(self.items(t, p, "domain_keyword", self.domain)),
            cidrs=self.items(t, p, "cidr", self.network),
            ports=self.items(t, p, "port", self.port_range),
            networks=networks,
            origin=self.origin(p),
        )
        self.no_leftovers(
            t,
            p,
            ("outbound", "domain", "domain_suffix", "domain_keyword", "cidr", "port", "network"),
        )
        if not (rule.has_destination or rule.ports or rule.networks):
            raise self.error(p, "rule has no condition; use default_outbound for a catch-all")
        return rule
