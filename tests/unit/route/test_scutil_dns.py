"""macOS --dns at the process boundary: every line ztun feeds to ``scutil``.

MOCK NOTICE: there is no macOS (and no configd) here, so ``scutil`` is a recording fake
(:class:`FakeScutil`): an interpreter of the commands of its stdin language that ztun
may use (``man 8 scutil``: ``open``, ``show KEY``, ``d.init``, ``d.add KEY [*#] VALUE
...``, ``set KEY``, ``remove KEY``, ``quit``) over an in-memory dynamic store, answering
``show`` in scutil's own output format.  Anything else in a script -- an unknown
command, a missing ``open``/``quit``, a value scutil would split -- fails the test.  The
hosted macOS CI row runs the real scutil.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tests.unit.route.darwin_kernel import PID, UTUN, FakeRouteSocket, home_table
from ztun.route import AutoRouteConfig, Journal
from ztun.route import darwin as d
from ztun.route import scutil as s
from ztun.route.model import ResolverChange

pytestmark = pytest.mark.macos

SERVICE = "8A6E4A5C-1F0B-4C7E-9F5D-3C2B1A0F9E8D"
SETUP_KEY = f"Setup:/Network/Service/{SERVICE}/DNS"
STATE_KEY = f"State:/Network/Service/{SERVICE}/DNS"
TUN_DNS = ipaddress.ip_address("172.19.0.2")

Value = str | int | tuple[str, ...]


class FakeScutil:
    """scutil over a dictionary of keys (see module doc)."""

    def __init__(self, store: dict[str, dict[str, Value]]) -> None:
        self.store = store
        self.scripts: list[str] = []

    def __call__(self, script: str) -> str:
        self.scripts.append(script)
        lines = script.split("\n")
        assert lines[0] == "open" and lines[-2:] == ["quit", ""], script
        out: list[str] = []
        draft: dict[str, Value] | None = None
        for line in lines[1:-2]:
            words = line.split(" ")
            assert all(words), f"double blank in {line!r}"
            match words:
                case ["show", key]:
                    out.append(self.show(key))
                case ["d.init"]:
                    draft = {}
                case ["d.add", name, "*", *values] if draft is not None and values:
                    draft[name] = tuple(values)
                case ["d.add", name, "#", value] if draft is not None:
                    draft[name] = int(value)
                case ["d.add", name, value] if draft is not None and value not in "*#?":
                    draft[name] = value
                case ["set", key] if draft is not None:
                    self.store[key] = dict(draft)
                case ["remove", key]:
                    if key not in self.store:
                        out.append("  No such key")  # what scutil prints, exit status 0
                    self.store.pop(key, None)
                case _:
                    raise AssertionError(f"scutil would not understand {line!r}")
        return "".join(o + "\n" for o in out)

    def show(self, key: str) -> str:
        if key not in self.store:
            return "  No such key"
        lines = ["<dictionary> {"]
        for name, value in self.store[key].items():
            if isinstance(value, tuple):
                lines.append(f"  {name} : <array> {{")
                lines += [f"    {i} : {v}" for i, v in enumerate(value)]
                lines.append("  }")
            else:
                lines.append(f"  {name} : {value}")
        return "\n".join([*lines, "}"])


def home_store() -> dict[str, dict[str, Value]]:
    return {
        "State:/Network/Global/IPv4": {
            "PrimaryInterface": "en0",
            "PrimaryService": SERVICE,
            "Router": "192.168.1.1",
        },
        STATE_KEY: {"ServerAddresses": ("192.168.1.1",), "SearchDomains": ("lan",)},
        SETUP_KEY: {},
    }


@pytest.fixture
def fake() -> FakeScutil:
    return FakeScutil(home_store())


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "utun7.journal")


def dns(journal: Journal, fake: FakeScutil) -> d.DarwinDns:
    return d.DarwinDns(journal, "utun7", resolver=s.ScutilResolver(fake))


def test_scripts_are_exactly_these(fake: FakeScutil, journal: Journal) -> None:
    dns(journal, fake).apply([TUN_DNS])
    assert fake.scripts == [
        "open\nshow State:/Network/Global/IPv4\nquit\n",
        f"open\nshow {SETUP_KEY}\nquit\n",
        f"open\nshow {STATE_KEY}\nquit\n",
        f"open\nd.init\nd.add ServerAddresses * 172.19.0.2\nset {SETUP_KEY}\nquit\n",
        "open\nd.init\nd.add ServerAddresses * 172.19.0.2\nd.add SearchDomains * lan\n"
        f"set {STATE_KEY}\nquit\n",
    ]
    assert fake.store[STATE_KEY]["ServerAddresses"] == ("172.19.0.2",)
    assert fake.store[STATE_KEY]["SearchDomains"] == ("lan",)  # the network's, kept


def test_the_journal_holds_what_was_there_before_the_change(
    fake: FakeScutil, journal: Journal
) -> None:
    dns(journal, fake).apply([TUN_DNS])
    state = journal.read()
    assert state.applied and state.device == "utun7"
    assert state.intents == {
        0: ResolverChange(SETUP_KEY, ("172.19.0.2",), previous=()),
        1: ResolverChange(
            STATE_KEY,
            ("172.19.0.2",),
            previous=(("ServerAddresses", ("192.168.1.1",)), ("SearchDomains", ("lan",))),
        ),
    }


def test_restore_puts_back_exactly_what_was_there(fake: FakeScutil, journal: Journal) -> None:
    before = {k: dict(v) for k, v in fake.store.items()}
    applier = dns(journal, fake)
    applier.apply([TUN_DNS, ipaddress.ip_address("fdfe:dcba:9876::2")])
    fake.scripts.clear()
    applier.restore()
    assert fake.store == before and not journal.exists()
    assert fake.scripts[0] == f"open\nshow {STATE_KEY}\nquit\n"  # newest first, checked first
    assert fake.scripts[1] == (
        "open\nd.init\nd.add ServerAddresses * 192.168.1.1\nd.add SearchDomains * lan\n"
        f"set {STATE_KEY}\nquit\n"
    )


def test_a_key_that_did_not_exist_is_removed(journal: Journal) -> None:
    store = home_store()
    del store[SETUP_KEY]
    fake = FakeScutil(store)
    applier = dns(journal, fake)
    applier.apply([TUN_DNS])
    applier.restore()
    assert SETUP_KEY not in fake.store
    assert f"open\nremove {SETUP_KEY}\nquit\n" in fake.scripts


def test_a_key_rewritten_since_is_left_alone(fake: FakeScutil, journal: Journal) -> None:
    """A DHCP renewal rewrote the State: key: the new lease's resolver stays."""
    applier = dns(journal, fake)
    applier.apply([TUN_DNS])
    fake.store[STATE_KEY] = {"ServerAddresses": ("10.0.0.1",)}
    applier.restore()
    assert fake.store[STATE_KEY] == {"ServerAddresses": ("10.0.0.1",)}
    assert fake.store[SETUP_KEY] == {}


def test_numbers_are_written_back_as_numbers(journal: Journal) -> None:
    store = home_store()
    store[STATE_KEY]["SearchOrder"] = 200
    fake = FakeScutil(store)
    applier = dns(journal, fake)
    applier.apply([TUN_DNS])
    applier.restore()
    assert fake.store[STATE_KEY]["SearchOrder"] == 200


def test_routes_and_resolver_share_one_journal(fake: FakeScutil, journal: Journal) -> None:
    """The platform seam hands both appliers the device's journal: routes first, DNS
    after (seq continues).  At exit (and in `ztun cleanup`) the DNS restore runs first and
    undoes only the resolver, leaving the file to the routes' restore."""
    sock = FakeRouteSocket(home_table())
    changer = d.DarwinChanger(lambda: sock, pid=PID, resolver=s.ScutilResolver(fake))
    routes = d.DarwinRoutes(journal, changer=changer, ifindex=lambda _name: UTUN)
    cfg = AutoRouteConfig(device="utun7", tun_addresses=(ipaddress.ip_interface("172.19.0.1/30"),))
    routes.apply(cfg)
    applier = dns(journal, fake)
    applier.apply([TUN_DNS])
    intents = journal.read().intents
    assert [type(intents[i]).__name__ for i in sorted(intents)] == [
        "SystemRoute", "SystemRoute", "ResolverChange", "ResolverChange"
    ]  # fmt: skip
    applier.restore()
    assert fake.store == home_store() and journal.exists()
    assert ipaddress.ip_network("0.0.0.0/1") in sock.table
    applier.restore()  # idempotent
    report = routes.restore()
    assert (report.removed, report.absent) == (2, 2)  # the resolver entries: already undone
    assert ipaddress.ip_network("0.0.0.0/1") not in sock.table and not journal.exists()


def test_a_crashed_runs_routes_and_resolver_are_both_restored(
    fake: FakeScutil, journal: Journal
) -> None:
    """`ztun cleanup` / the next start after a SIGKILL: the routes' restore alone undoes
    the resolver too."""
    sock = FakeRouteSocket(home_table())
    changer = d.DarwinChanger(lambda: sock, pid=PID, resolver=s.ScutilResolver(fake))
    routes = d.DarwinRoutes(journal, changer=changer, ifindex=lambda _name: UTUN)
    routes.apply(
        AutoRouteConfig(device="utun7", tun_addresses=(ipaddress.ip_interface("172.19.0.1/30"),))
    )
    dns(journal, fake).apply([TUN_DNS])
    report = routes.recover()
    assert report is not None and (report.removed, report.absent) == (4, 0)
    assert fake.store == home_store() and not journal.exists()


@pytest.mark.parametrize(
    ("output", "entries"),
    [
        ("  No such key\n", None),
        ("<dictionary> {\n}\n", ()),
        (
            "<dictionary> {\n  DomainName : lan\n  ServerAddresses : <array> {\n"
            "    0 : 192.168.1.1\n    1 : fe80::1%en0\n  }\n}\n",
            (("DomainName", "lan"), ("ServerAddresses", ("192.168.1.1", "fe80::1%en0"))),
        ),
    ],
)
def test_parse_show(output: str, entries: object) -> None:
    assert s.parse_show(output) == entries


@pytest.mark.parametrize(
    "output",
    [
        "<dictionary> {\n  Nested : <dictionary> {\n    a : b\n  }\n}\n",
        "<dictionary> {\n  Blob : <data> 0x0102\n}\n",
        "something else\n",
    ],
)
def test_what_cannot_be_restored_is_refused_before_any_change(output: str) -> None:
    with pytest.raises(s.ScutilError):
        s.parse_show(output)


def test_no_primary_service_says_so(journal: Journal) -> None:
    fake = FakeScutil({})
    with pytest.raises(s.ScutilError, match="no primary network service"):
        dns(journal, fake).apply([TUN_DNS])
    assert not journal.exists()


def test_a_value_scutil_would_split_is_refused() -> None:
    with pytest.raises(s.ScutilError, match="cannot write"):
        s.set_script("State:/x", (("SearchDomains", ("two words",)),))


def test_scutil_error_output_fails_the_change(journal: Journal) -> None:
    def denied(script: str) -> str:
        if "\nset " in script:
            return "  set: Permission denied\n"
        return FakeScutil(home_store())(script)

    with pytest.raises(s.ScutilError, match="Permission denied"):
        d.DarwinDns(journal, "utun7", resolver=s.ScutilResolver(denied)).apply([TUN_DNS])
    assert not journal.exists()  # rolled back: nothing was changed


def test_scutil_is_a_registered_external_tool() -> None:
    from ztun.tools import TOOLS, Source

    assert TOOLS["scutil"].source is Source.EXTERNAL
    assert "macOS system tool" in TOOLS["scutil"].why
