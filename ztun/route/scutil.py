"""macOS ``--dns``: the system resolver set through the SystemConfiguration dynamic store.

MOCK NOTICE: ``scutil`` exists only on macOS.  Everything ztun says to it is a script
built by pure functions here (its stdin command language, ``man 8 scutil``) and
everything it answers is parsed here, and :class:`ScutilResolver` takes the program
runner as an argument, so the tests check every script line and feed back answers in
scutil's own format; the hosted macOS CI row runs it for real.

How macOS picks the resolver: configd's IPMonitor builds the default resolver from the
DNS dictionary of the *primary* network service (``State:/Network/Global/IPv4``'s
``PrimaryService``), merging ``Setup:/Network/Service/<id>/DNS`` (what the user
configured; it wins) over ``State:/Network/Service/<id>/DNS`` (what DHCP found).  So
ztun sets ``ServerAddresses`` in both keys of the primary service -- the ``Setup:`` one
decides, the ``State:`` one keeps tools that read only state (and a ``Setup:`` key that
the preferences monitor rewrites) pointing the same way; Tunnelblick does the same.
These keys live in configd's memory only: a reboot drops them, as it drops routes.

Before each key is set, what it held is read (``show``) and journaled with the change
(:class:`ztun.route.model.ResolverChange`), so restore can put back exactly that, or
remove the key if there was none.  :class:`ScutilResolver` makes and undoes those
changes; the ``--dns`` applier that journals them, :class:`ztun.route.darwin.DarwinDns`,
sits above it with the routes' changer.  Restore touches a key only while it still holds the
servers ztun set: if DHCP rewrote the ``State:`` key meanwhile, the new lease's value
stays.

Value types: ``show`` prints numbers and strings alike, so a saved dictionary is
restored with strings except for the DNS keys known to be numbers (``NUMBER_KEYS``);
a value ztun cannot write back faithfully (a nested dictionary, data) makes the apply
fail before anything changed.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable, Sequence

from ztun.route.model import JournalChange, ResolverChange, ResolverValue, RouteError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Saved = tuple[tuple[str, ResolverValue], ...]

GLOBAL_IPV4 = "State:/Network/Global/IPv4"
SERVICE_DNS_KEYS = ("Setup:/Network/Service/{id}/DNS", "State:/Network/Service/{id}/DNS")
NUMBER_KEYS = frozenset({"SearchOrder", "ServerPort", "ServerTimeout"})
SCUTIL_TIMEOUT = 10.0
_NO_SUCH_KEY = "No such key"
_TOKEN = re.compile(r"[^\s\"'\\#*?]+")
_SERVICE_ID = re.compile(r"[A-Za-z0-9-]+")

Runner = Callable[[str], str]


class ScutilError(RouteError):
    """scutil failed or answered something ztun cannot read (message says what)."""


def run_scutil(script: str) -> str:  # pragma: no cover - macOS only (the hosted CI row)
    """Feed ``script`` to ``scutil`` on stdin; its output (it reports errors there too)."""
    from ztun.tools import tool

    try:
        done = subprocess.run(
            [tool("scutil")],
            input=script,
            capture_output=True,
            text=True,
            timeout=SCUTIL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScutilError(f"scutil: {exc}") from exc
    if done.returncode != 0:
        raise ScutilError(f"scutil exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


# -- the command language ----------------------------------------------------------------


def _token(value: str) -> str:
    """A word scutil's tokenizer keeps whole: no blanks, quotes, escapes or type marks."""
    if not _TOKEN.fullmatch(value):
        raise ScutilError(f"scutil: cannot write {value!r} as a dictionary value")
    return value


def show_script(key: str) -> str:
    return f"open\nshow {_token(key)}\nquit\n"


def set_script(key: str, entries: Saved) -> str:
    """``d.init``, one ``d.add`` per entry (``*`` array, ``#`` number), ``set KEY``."""
    lines = ["open", "d.init"]
    for name, value in entries:
        if isinstance(value, tuple):
            lines.append(" ".join(["d.add", _token(name), "*", *map(_token, value)]))
        elif name in NUMBER_KEYS:
            lines.append(f"d.add {_token(name)} # {_token(value)}")
        else:
            lines.append(f"d.add {_token(name)} {_token(value)}")
    lines += [f"set {_token(key)}", "quit"]
    return "\n".join(lines) + "\n"


def remove_script(key: str) -> str:
    return f"open\nremove {_token(key)}\nquit\n"


def dns_entries(servers: Sequence[str], previous: Saved | None) -> Saved:
    """The dictionary ztun sets: the saved one with ``ServerAddresses`` replaced (its
    search domains and the rest stay as the network gave them)."""
    kept = [(k, v) for k, v in (previous or ()) if k != "ServerAddresses"]
    return (("ServerAddresses", tuple(servers)), *kept)


def parse_show(output: str) -> Saved | None:
    """A ``show`` answer: None for "No such key", else the dictionary's entries in
    order -- scalars as strings, arrays as tuples of strings."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines or lines[0] == _NO_SUCH_KEY:
        return None
    if lines[0] != "<dictionary> {" or lines[-1] != "}":
        raise ScutilError(f"scutil: not a dictionary: {output.strip()[:200]!r}")
    entries: list[tuple[str, ResolverValue]] = []
    array: list[str] | None = None
    array_name = ""
    for line in lines[1:-1]:
        if array is not None:
            if line == "}":
                entries.append((array_name, tuple(array)))
                array = None
                continue
            _, sep, value = line.partition(" : ")
            if not sep:
                raise ScutilError(f"scutil: unreadable array element {line!r}")
            if value.startswith("<"):
                raise ScutilError(f"scutil: {array_name} holds a {value} ztun cannot restore")
            array.append(value)
            continue
        name, sep, value = line.partition(" : ")
        if not sep:
            raise ScutilError(f"scutil: unreadable line {line!r}")
        if value == "<array> {":
            array, array_name = [], name
        elif value.startswith("<"):
            raise ScutilError(f"scutil: {name} is a {value.split()[0]} ztun cannot restore")
        else:
            entries.append((name, value))
    if array is not None:
        raise ScutilError("scutil: an array is not closed")
    return tuple(entries)


def primary_service(output: str) -> str:
    """``PrimaryService`` from a ``show State:/Network/Global/IPv4`` answer."""
    entries = dict(parse_show(output) or ())
    service = entries.get("PrimaryService")
    if not isinstance(service, str) or not _SERVICE_ID.fullmatch(service):
        raise ScutilError(
            "scutil: no primary network service (State:/Network/Global/IPv4 has no "
            "PrimaryService): is the Mac on a network?"
        )
    return service


# -- the changer -------------------------------------------------------------------------


class ScutilResolver:
    """Makes and unmakes :class:`ResolverChange` entries through ``scutil``."""

    def __init__(self, run: Runner = run_scutil) -> None:
        self._run = run

    def read(self, key: str) -> Saved | None:
        return parse_show(self._run(show_script(key)))

    def plan(self, servers: Sequence[IPAddress]) -> list[ResolverChange]:
        """One change per DNS key of the primary service, each with what it holds now."""
        if not servers:
            raise ScutilError("--dns on macOS needs at least one resolver address")
        service = primary_service(self._run(show_script(GLOBAL_IPV4)))
        texts = tuple(str(s) for s in servers)
        return [
            ResolverChange(key=key, servers=texts, previous=self.read(key))
            for key in (k.format(id=service) for k in SERVICE_DNS_KEYS)
        ]

    def add(self, change: JournalChange) -> bool:
        assert isinstance(change, ResolverChange)
        self._checked(set_script(change.key, dns_entries(change.servers, change.previous)))
        return True

    def remove(self, change: JournalChange) -> bool:
        assert isinstance(change, ResolverChange)
        now = self.read(change.key)
        if now is None or dict(now).get("ServerAddresses") != change.servers:
            return False  # never set, or rewritten since (a new DHCP lease): not ours
        if change.previous is None:
            self._checked(remove_script(change.key))
        else:
            self._checked(set_script(change.key, change.previous))
        return True

    def _checked(self, script: str) -> None:
        """scutil reports a failed set/remove on its output and still exits 0."""
        output = self._run(script).strip()
        if output:
            raise ScutilError(f"scutil: {output}")
