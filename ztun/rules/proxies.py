"""The proxies and groups of a config (docs/contracts.md section 2), validated.

``[[proxies]]`` names proxy URLs; ``[groups.NAME]`` puts proxies together under a policy,
with a probe; ``proxy = URL`` (or a list) and every ``--proxy`` become ``proxy1``,
``proxy2``, ... in the failover group ``default``. Without any of those, the group
``default`` holds every ``[[proxies]]`` entry in file order, and without those either it
is the one proxy ``socks5://127.0.0.1:1080``. ``proxy = "direct://"`` (or
``"reject://"``, alone) makes ``default`` another name for ``direct`` (``reject``), as a
single ``--proxy direct://`` always did. A rule, ``default_outbound`` and the legacy
``action`` name one of these: a proxy, a group, ``direct`` or ``reject``.

The parsing functions take the config builder (``ztun.rules.config._Builder``) so errors
carry the file, line and key like every other section's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ztun.rules.errors import kind_name

if TYPE_CHECKING:
    from ztun.rules.config import _Builder
    from ztun.rules.errors import KeyPath

DEFAULT_PROXY = "socks5://127.0.0.1:1080"
DEFAULT_GROUP = "default"
DIRECT, REJECT = "direct", "reject"
RESERVED_NAMES = (DIRECT, REJECT, DEFAULT_GROUP)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
DEFAULT_PROBE_INTERVAL = 5.0
MIN_PROBE_INTERVAL = 0.2
#: The legacy ``action`` / ``default_action`` values and the outbound each names now.
LEGACY_ACTIONS = {"proxy": DEFAULT_GROUP, "direct": DIRECT, "reject": REJECT}
PROXY_KEYS = ("name", "url", "udp")
GROUP_KEYS = ("policy", "members", "probe", "interval")


class Policy(StrEnum):
    """How a group picks among its members that are up."""

    FAILOVER = "failover"  # the first up member, in the order given
    ROUND_ROBIN = "round-robin"  # each new flow the next up member
    LEAST_CONNECTIONS = "least-connections"  # the up member with the fewest open flows


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """One named proxy. ``url`` is as written (``redact`` it for display); ``udp`` says
    whether its UDP is used (only SOCKS5 has any)."""

    name: str
    url: str
    udp: bool
    origin: str = ""


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """One group: ``members`` are proxy names in priority order; ``probe`` is the
    ``(host, port)`` CONNECTed through each member every ``interval`` seconds (None:
    health comes from real connections, and a down member is retried by a TCP connect)."""

    name: str
    members: tuple[str, ...]
    policy: Policy = Policy.FAILOVER
    probe: tuple[str, int] | None = None
    interval: float = DEFAULT_PROBE_INTERVAL
    origin: str = ""


def builtin_default(urls: tuple[str, ...]) -> str | None:
    """``direct`` or ``reject`` when the ``proxy`` key is ``direct://`` or ``reject://``."""
    from ztun.outbound.url import parse_outbound_url

    if len(urls) != 1:
        return None
    spec = parse_outbound_url(urls[0])
    return spec if isinstance(spec, str) else None


def implicit_proxies(urls: tuple[str, ...], named: tuple[ProxySpec, ...]) -> tuple[ProxySpec, ...]:
    """``proxy1``, ``proxy2``, ... for the ``proxy`` key's URLs (or the built-in default
    when there are neither URLs nor ``[[proxies]]``)."""
    from ztun.outbound.url import parse_proxy_url

    if builtin_default(urls) is not None:
        return ()
    if not urls and not named:
        urls = (DEFAULT_PROXY,)
    return tuple(
        ProxySpec(f"proxy{i}", url, parse_proxy_url(url).udp_capable, "proxy")
        for i, url in enumerate(urls, start=1)
    )


def default_group(implicit: tuple[ProxySpec, ...], named: tuple[ProxySpec, ...]) -> GroupSpec:
    """The failover group ``default``: the implicit proxies, else every named one."""
    members = implicit or named
    return GroupSpec(DEFAULT_GROUP, tuple(p.name for p in members), origin="proxy")


# -- parsing (errors through the config builder) -------------------------------------------


def parse_proxy_urls(b: _Builder, data: dict[str, Any]) -> tuple[str, ...]:
    """``proxy = "URL"`` or ``proxy = ["URL", ...]`` (what repeated ``--proxy`` gives)."""
    if "proxy" not in data:
        return ()
    raw = data.pop("proxy")
    values = raw if isinstance(raw, list) else [raw]
    urls = []
    for i, value in enumerate(values):
        path: KeyPath = ("proxy", i) if isinstance(raw, list) else ("proxy",)
        if not isinstance(value, str):
            raise b.error(path, f"must be a string, not {kind_name(type(value))}")
        urls.append(proxy_url(b, value, path, alone=len(values) == 1))
    return tuple(urls)


def proxy_url(b: _Builder, text: str, path: KeyPath, *, alone: bool = False) -> str:
    """`text` checked as a proxy URL; direct:// and reject:// are names, not proxies, and
    only a lone ``proxy`` URL may be one of them (the legacy ``--proxy direct://``)."""
    from ztun.outbound.url import parse_outbound_url, redact

    try:
        spec = parse_outbound_url(text)
    except ValueError as exc:
        shown = str(exc).removeprefix("proxy URL ").removeprefix("outbound URL ")
        raise b.error(path, shown) from None
    if isinstance(spec, str) and not alone:
        hint = "use fail_open for a direct fallback" if path[0] == "proxy" else "use its name"
        raise b.error(path, f"{redact(text)!r} is not a proxy, it cannot be in a group ({hint})")
    return text


def parse_proxies(b: _Builder, data: dict[str, Any], taken: set[str]) -> tuple[ProxySpec, ...]:
    """``[[proxies]]``: each with a unique ``name`` and a ``url``, ``udp`` optional."""
    from ztun.outbound.url import parse_proxy_url

    raw = data.pop("proxies", [])
    if not isinstance(raw, list):
        raise b.error(("proxies",), "must be an array of tables ([[proxies]])")
    specs = []
    for i, entry in enumerate(raw):
        p: KeyPath = ("proxies", i)
        if not isinstance(entry, dict):
            raise b.error(p, "each proxy must be a table ([[proxies]])")
        t = dict(entry)
        for key in ("name", "url"):
            if key not in t:
                raise b.error(p, f"proxy has no {key}")
        name = new_name(b, t.pop("name"), (*p, "name"), taken)
        url_text = t.pop("url")
        if not isinstance(url_text, str):
            raise b.error((*p, "url"), f"must be a string, not {kind_name(type(url_text))}")
        url = parse_proxy_url(proxy_url(b, url_text, (*p, "url")))
        udp = b.take(t, p, "udp", bool, url.udp_capable)
        if udp and not url.udp_capable:
            raise b.error(
                (*p, "udp"), f"{url.scheme}:// carries no UDP (only socks5:// proxies do)"
            )
        b.no_leftovers(t, p, PROXY_KEYS)
        specs.append(ProxySpec(name, url_text, udp, b.origin(p)))
    return tuple(specs)


def parse_groups(
    b: _Builder,
    data: dict[str, Any],
    proxies: set[str],
    taken: set[str],
    ipv4_only: set[str] | frozenset[str] = frozenset(),
) -> tuple[GroupSpec, ...]:
    """``[groups.NAME]`` tables: members (proxy names), policy, probe, interval.
    `ipv4_only`: the socks4:// proxies, which can reach an IPv4 address only (a probe by
    name or IPv6 address would never tell whether they work)."""
    raw = data.pop("groups", {})
    if not isinstance(raw, dict):
        raise b.error(("groups",), "must be a table of groups ([groups.NAME])")
    specs = []
    for name_raw, entry in raw.items():
        p: KeyPath = ("groups", name_raw)
        name = new_name(b, name_raw, p, taken)
        if not isinstance(entry, dict):
            raise b.error(p, "a group must be a table ([groups.NAME])")
        t = dict(entry)
        policy = Policy(
            b.choice(t.pop("policy"), (*p, "policy"), tuple(Policy))
            if "policy" in t
            else Policy.FAILOVER
        )
        if "members" not in t:
            raise b.error(p, "group has no members (a list of proxy names)")
        members_raw = t.pop("members")
        if not isinstance(members_raw, list) or not members_raw:
            raise b.error((*p, "members"), "must be a non-empty list of proxy names")
        members: list[str] = []
        for i, member in enumerate(members_raw):
            members.append(_member(b, member, (*p, "members", i), proxies, members, taken))
        probe = None
        if "probe" in t:
            probe_text = t.pop("probe")
            if not isinstance(probe_text, str):
                raise b.error(
                    (*p, "probe"), f"must be a string HOST:PORT, not {kind_name(type(probe_text))}"
                )
            probe = b.host_port(probe_text, (*p, "probe"), 0)
            if probe[1] == 0:
                raise b.error((*p, "probe"), f"{probe_text!r} needs a port (HOST:PORT)")
            blind = [m for m in members if m in ipv4_only]
            if blind and not _is_ipv4(probe[0]):
                raise b.error(
                    (*p, "probe"),
                    f"{probe_text!r}: {', '.join(blind)} is socks4:// and reaches IPv4 "
                    "addresses only (give an IPv4 probe, or use socks4a:// for names)",
                )
        interval = b.take(t, p, "interval", float, DEFAULT_PROBE_INTERVAL)
        if interval < MIN_PROBE_INTERVAL:
            raise b.error((*p, "interval"), f"must be at least {MIN_PROBE_INTERVAL:g} seconds")
        b.no_leftovers(t, p, GROUP_KEYS)
        specs.append(GroupSpec(name, tuple(members), policy, probe, interval, b.origin(p)))
    return tuple(specs)


def outbound_name(b: _Builder, value: Any, path: KeyPath, known: tuple[str, ...]) -> str:
    """A name a rule or ``default_outbound`` may use: a proxy, a group, direct, reject."""
    if not isinstance(value, str):
        raise b.error(path, f"must be a string, not {kind_name(type(value))}")
    if value not in known:
        raise b.error(
            path, f"{value!r} is not a proxy, a group, direct or reject (known: {', '.join(known)})"
        )
    return value


def new_name(b: _Builder, value: Any, path: KeyPath, taken: set[str]) -> str:
    if not isinstance(value, str):
        raise b.error(path, f"must be a string, not {kind_name(type(value))}")
    if not NAME_PATTERN.fullmatch(value):
        raise b.error(path, f"{value!r}: a name is 1-32 of A-Z a-z 0-9 _ . -")
    if value in RESERVED_NAMES:
        raise b.error(path, f"{value!r} is reserved ({', '.join(RESERVED_NAMES)})")
    if value in taken:
        raise b.error(path, f"{value!r} is already the name of another proxy or group")
    taken.add(value)
    return value


def _member(
    b: _Builder, value: Any, path: KeyPath, proxies: set[str], seen: list[str], names: set[str]
) -> str:
    if not isinstance(value, str):
        raise b.error(path, f"must be a proxy name, not {kind_name(type(value))}")
    if value not in proxies:
        what = "a group (members are proxies)" if value in names else "not a proxy"
        raise b.error(path, f"{value!r} is {what}; proxies: {', '.join(sorted(proxies))}")
    if value in seen:
        raise b.error(path, f"{value!r} is listed twice")
    return value


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True
