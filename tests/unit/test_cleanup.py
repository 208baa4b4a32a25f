"""`ztun cleanup` (and the next start's recovery) keep going when one journal, or one
entry of it, cannot be undone: the rest is restored, what failed is named, the exit
status is 1 and the failed journal stays for another try.

MOCK NOTICE: these journals are macOS ones (routes through PF_ROUTE, the resolver
through scutil), there being no macOS here: the kernel's routing table is
`tests.unit.route.darwin_kernel.FakeRouteSocket` (which checks every struct rt_msghdr
byte written, net/route.h) and scutil is `FakeScutil` (its stdin language, man 8
scutil); ztun's real appliers, journal and cleanup run against them. Linux's own case
(a real kernel, a journal another OS wrote) is in
tests/integration/autoroute/test_ztun_auto_route.py.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.route.darwin_kernel import PID, UTUN, FakeRouteSocket, home_table
from tests.unit.route.test_scutil_dns import TUN_DNS, FakeScutil, home_store
from ztun import cleanup as cleanup_module
from ztun.platform.darwin import DarwinPlatform
from ztun.route import AutoRouteConfig, Journal
from ztun.route import darwin as d
from ztun.route import scutil as s
from ztun.route.model import PolicyRule

pytestmark = pytest.mark.macos

TUNNEL_HALF = ipaddress.ip_network("0.0.0.0/1")


@dataclass
class Host:
    """One device's view of the faked macOS: its routing table and its dynamic store."""

    sock: FakeRouteSocket
    scutil: FakeScutil
    denied: bool = False

    def run_scutil(self, script: str) -> str:
        if self.denied and ("\nset " in script or "\nremove " in script):
            return "  set: Permission denied\n"
        return self.scutil(script)


class FakedDarwin(DarwinPlatform):
    """macOS's platform with its state directory in a temporary one and its appliers
    on the fakes of each device (the journal's name)."""

    def __init__(self, state_dir: Path, hosts: dict[str, Host]) -> None:
        self._state_dir = state_dir
        self.hosts = hosts

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    def routes(self, journal: Journal) -> d.DarwinRoutes:
        host = self.hosts[journal.path.stem]
        changer = d.DarwinChanger(
            lambda: host.sock, pid=PID, resolver=s.ScutilResolver(host.run_scutil)
        )
        return d.DarwinRoutes(journal, changer=changer, ifindex=lambda _name: UTUN)

    def dns(self, journal: Journal) -> d.DarwinDns:
        host = self.hosts[journal.path.stem]
        return d.DarwinDns(journal, journal.path.stem, resolver=s.ScutilResolver(host.run_scutil))

    def is_ztun(self, pid: int) -> bool:
        return False  # the journals' writer (this test's pid) is "killed"


@pytest.fixture
def crashed(tmp_path: Path) -> FakedDarwin:
    """A run on utun7 killed with its routes and resolver set; utun3 is another
    device's name, for a journal no macOS applier can undo."""
    platform = FakedDarwin(
        tmp_path,
        {
            name: Host(FakeRouteSocket(home_table()), FakeScutil(home_store()))
            for name in ("utun3", "utun7")
        },
    )
    journal = Journal(platform.journal_path("utun7"))
    platform.routes(journal).apply(
        AutoRouteConfig(device="utun7", tun_addresses=(ipaddress.ip_interface("172.19.0.1/30"),))
    )
    platform.dns(journal).apply([TUN_DNS])
    assert TUNNEL_HALF in platform.hosts["utun7"].sock.table
    assert platform.hosts["utun7"].scutil.store != home_store()
    return platform


def restored(platform: FakedDarwin) -> bool:
    """utun7's run left nothing: routes, resolver and journal."""
    host = platform.hosts["utun7"]
    return (
        TUNNEL_HALF not in host.sock.table
        and host.scutil.store == home_store()
        and not platform.journal_path("utun7").exists()
    )


def test_undo_journal_runs_the_routes_step_after_the_resolver_failed(
    crashed: FakedDarwin,
) -> None:
    host = crashed.hosts["utun7"]
    host.denied = True
    journal = Journal(crashed.journal_path("utun7"))
    report, failed = cleanup_module.undo_journal(crashed, journal)
    assert report is None
    assert [line.split(":")[0] for line in failed] == ["DNS", "routes"]
    assert all("Permission denied" in line for line in failed)
    # Every route entry was still undone; the resolver entries keep the journal alive.
    assert TUNNEL_HALF not in host.sock.table
    assert journal.exists()
    host.denied = False  # the next try (another cleanup) finishes the job
    report, failed = cleanup_module.undo_journal(crashed, journal)
    assert failed == [] and report is not None
    assert restored(crashed)


def test_cleanup_restores_every_journal_it_can_and_exits_1_naming_the_others(
    crashed: FakedDarwin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """utun3's journal (walked first) holds a Linux rule: macOS cannot undo it."""
    linux = Journal(crashed.journal_path("utun3"))
    linux.begin("utun3", None)
    linux.intent(0, PolicyRule(family=socket.AF_INET, priority=9000, table=2022))
    linux.done(0)
    monkeypatch.setattr(cleanup_module, "current", lambda: crashed)
    monkeypatch.setattr(DarwinPlatform, "cleanup_extras", lambda self, say: 0)
    assert cleanup_module.cleanup() == 1
    out = capsys.readouterr().out
    assert f"cannot restore {linux.path}: routes: " in out
    assert "not a macOS change (another OS's journal)" in out
    assert f"restored routes from {crashed.journal_path('utun7')}: removed " in out
    assert "changes ztun made" in out and "RestoreReport(" not in out
    assert f"not restored (left for another try): {linux.path}" in out
    assert restored(crashed) and linux.exists()


def test_a_journal_that_is_not_one_does_not_stop_the_others(
    crashed: FakedDarwin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = crashed.journal_path("utun3")
    junk.write_text("this is not a journal\n")
    monkeypatch.setattr(cleanup_module, "current", lambda: crashed)
    monkeypatch.setattr(DarwinPlatform, "cleanup_extras", lambda self, say: 0)
    assert cleanup_module.cleanup() == 1
    out = capsys.readouterr().out
    assert f"cannot restore {junk}: DNS: {junk}:1: not a ztun journal line" in out
    assert restored(crashed) and junk.exists()


def test_an_exclude_only_the_os_planner_refuses_exits_2_at_start_up(
    crashed: FakedDarwin, caplog: pytest.LogCaptureFixture
) -> None:
    """What only the OS's planner can see (an --exclude no narrower than the tunnel's
    /1 that carries it today) is a bad option: exit 2 with the planner's words, and
    nothing made (was: a traceback out of `ztun run`)."""
    from ztun.app import _set_up
    from ztun.cli import _options, build_parser

    parser = build_parser()
    args = ["run", "--device", "tun://utun3", "--auto-route", "--exclude", "0.0.0.0/1"]
    opts = _options(parser.parse_args(args), parser)
    routes = crashed.routes(Journal(crashed.journal_path("utun3")))
    assert _set_up(routes, None, opts, (), "utun3") == 2
    assert "auto-route: --exclude 0.0.0.0/1 is not more specific" in caplog.text
    assert not crashed.journal_path("utun3").exists()
    assert crashed.hosts["utun3"].sock.table == FakeRouteSocket(home_table()).table
