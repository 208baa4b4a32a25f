"""The ztun harness as a pytest plugin (``pytest11`` entry point ``ztun_harness``).

What it adds, and why:

* options ``--seed`` (one seed per run, printed, identical on every xdist worker),
  ``--tun2socks`` (implementation under test), ``--update-golden``, ``--keep-pcaps``,
  ``--artifacts DIR``;
* markers (registered, so ``--strict-markers`` catches typos); ``netns`` tests skip with a
  reason when not root;
* fixtures ``seed``, ``rng``, ``artifacts``, ``topology``, ``topology_factory``,
  ``netem``, ``require_root``, ``tun2socks_name``;
* evidence: each test has ``<artifacts>/<run>/<test id>/``; a failing test's report gets a
  section naming its pcaps (with a summary), process logs and seed; a passing test's
  folder is deleted unless ``--keep-pcaps``;
* hygiene: a leak check at session end (namespaces and links under this process's owner
  prefix, spawned processes, changes to the root namespace) that fails the run; dead
  runs' leftovers are removed at session start; SIGTERM is turned into
  KeyboardInterrupt so a killed run still runs its finalizers.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import importlib.metadata
import os
import platform
import random
import shutil
import signal
import sys
import textwrap
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import artifacts as artifacts_mod
from harness import conformance
from harness.artifacts import TestArtifacts, safe_test_dirname
from harness.faults import Faults, netem_support
from harness.hosts import Host
from harness.hosts.netns import list_netns, remove_netns
from harness.hygiene import (
    Leaks,
    RootSnapshot,
    cleanup,
    find_leaks,
    kill_live_processes,
    release_owner,
)
from harness.impls import (
    DEFAULT_IMPLEMENTATION,
    ENTRY_POINT_GROUP,
    PLACEHOLDERS,
    AdapterChoice,
    Tun2Socks,
    choose_adapter,
    names,
)
from harness.proc import interrupt_on, run_local
from harness.skips import have_tool, is_root, missing_tools_header, require_tool
from harness.skips import require_root as _require_root
from harness.state import HarnessState, set_state, state
from harness.timescale import set_time_scale, time_scale
from harness.topo import NAME_PREFIX, Namer, Topology, TopologySpec, client_proxy_server
from harness.vmfixtures import (  # noqa: F401  VM fixtures for any test; heavy imports inside
    qemu_host,
    testinfra_for,
    vagrant_linux,
    vm_image,
    vm_state,
    vm_testinfra,
)
from ztun.tools import tool

__all__ = ["HarnessState", "derive_seed", "state"]

MARKERS = {
    "netns": "needs root and network namespaces (skipped with a reason otherwise)",
    "vm": "needs a QEMU/Vagrant virtual machine",
    "linux": "runs only against Linux hosts",
    "windows": "the Windows layer (byte-level, syscall fakes): runs anywhere, and the "
    "Windows CI row selects it",
    "macos": "the macOS layer (byte-level, syscall fakes): runs anywhere, and the macOS CI "
    "row selects it",
    "slow": "takes more than a few seconds",
    "pcap": "captures packets / compares traces",
    "conformance": "part of the tun2socks conformance suite",
    "optional": "a conformance behaviour implementations may differ on: its failure is "
    "reported, never fails the run",
}

TOPOLOGIES = ("netns", "single")
SINGLE_HOSTS = ("auto", "namespace", "local")
SEED_BITS = 32
REPORT_SECTION = "ztun artifacts"
LOG_TAIL_IN_REPORT = 15
STARTUP_CLEANUP_ENV = "ZTUN_HARNESS_STARTUP_CLEANUP"
"""Set to 0 to keep dead runs' leftovers at session start (e.g. to inspect them)."""

_ONE_AT_A_TIME_KEY = pytest.StashKey[str]()
_TEST_KEY = pytest.StashKey[TestArtifacts]()
_FAILED_KEY = pytest.StashKey[bool]()


def single_host_kind(choice: str, platform_name: str = sys.platform) -> str:
    """``--single-host`` resolved: ``namespace`` or ``local`` (auto: namespace on Linux)."""
    if choice == "auto":
        return "namespace" if platform_name == "linux" else "local"
    return choice


def shares_one_host(topology: str, single_host: str, platform_name: str = sys.platform) -> bool:
    """Whether every behaviour runs on the same host, so two cannot run at once.

    On one host two behaviours would share what the suite gives each of them by name: the
    TUN device (``ctun0``; and on Linux ztun's nftables table named after it), the routes
    for the documentation prefixes (a host has one route per prefix, so a second TUN
    cannot take them; on macOS utun names are the kernel's, but the routes still clash)
    and the loopback ports of the recording proxy and the targets (EADDRINUSE). The
    netns topology and ``--single-host namespace`` give each behaviour hosts of its own.
    """
    return topology == "single" and single_host_kind(single_host, platform_name) == "local"


ONE_AT_A_TIME_NOTE = (
    "ztun harness: --topology single on a local host runs one behaviour at a time, not "
    "{workers} at once: they would share one TUN name, the routes for the documentation "
    "prefixes and the loopback ports"
)


def derive_seed(seed: int, nodeid: str) -> int:
    """A test's own seed: stable for (run seed, node id), independent of test order."""
    digest = hashlib.sha256(f"{seed}:{nodeid}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# --------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ztun", "ztun harness")
    group.addoption(
        "--seed",
        type=int,
        default=None,
        help="run seed (default: random, printed in the header); tests derive theirs from it",
    )
    add_adapter_options(group.addoption)
    group.addoption(
        "--topology",
        choices=TOPOLOGIES,
        default="netns",
        help="where the conformance suite runs: netns (client -- proxy -- server "
        "namespaces; default) or single (one host, targets in the documentation ranges)",
    )
    group.addoption(
        "--single-host",
        choices=SINGLE_HOSTS,
        default="auto",
        help="the single topology's host: a fresh namespace per test (namespace; auto on "
        "Linux) or this machine (local; auto elsewhere; on Linux only inside a namespace)",
    )
    group.addoption(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply every time bound and test timeout by F >= 1 (e.g. 10 in a TCG guest)",
    )
    group.addoption(
        "--report",
        default=None,
        metavar="DIR",
        help="also write the conformance report (report.json/.md/.html) into DIR",
    )
    group.addoption(
        "--update-golden", action="store_true", help="re-record golden pcaps instead of diffing"
    )
    group.addoption(
        "--keep-pcaps",
        action="store_true",
        help="keep pcaps and logs of passing tests too (default: only failing tests')",
    )
    group.addoption(
        "--artifacts",
        default=None,
        metavar="DIR",
        help="root folder for per-run artifacts (default: <rootdir>/artifacts)",
    )


def add_adapter_options(addoption: Callable[..., Any]) -> None:
    """The ``--tun2socks*`` options (pytest's ``addoption`` or argparse's ``add_argument``:
    ``ztun-harness certify`` offers the same ones)."""
    addoption(
        "--tun2socks",
        default=None,
        metavar="NAME",
        help=f"implementation under test: an adapter of the entry-point group "
        f"{ENTRY_POINT_GROUP!r} (installed: {', '.join(names()) or 'none'}; "
        f"default: {DEFAULT_IMPLEMENTATION})",
    )
    addoption(
        "--tun2socks-command",
        default=None,
        metavar="ARGV",
        help="or: the implementation's command line, with placeholders "
        + " ".join("{" + p + "}" for p in PLACEHOLDERS),
    )
    addoption(
        "--tun2socks-config-template",
        default=None,
        metavar="FILE",
        help="a config file template rendered with the same placeholders into {config}",
    )
    addoption(
        "--tun2socks-ready",
        default=None,
        metavar="SPEC",
        help="when the command is ready: link (default: its device exists), log:REGEX, tcp:PORT",
    )
    addoption(
        "--tun2socks-name",
        default=None,
        metavar="NAME",
        help="the implementation's column in the report (default: the adapter's name)",
    )
    addoption(
        "--tun2socks-version-command",
        default=None,
        metavar="ARGV",
        help="prints the implementation's version (first line) for the report",
    )
    addoption(
        "--tun2socks-harness-configures-device",
        action="store_true",
        default=False,
        help="the command only creates the device; the harness sets MTU, addresses, up",
    )


def adapter_choice_from(config: pytest.Config) -> AdapterChoice:
    """The implementation under test as the options chose it (a bad mix: usage error)."""
    opt = config.getoption
    try:
        return choose_adapter(
            opt("tun2socks"),
            command=opt("tun2socks_command"),
            config_template=opt("tun2socks_config_template"),
            ready=opt("tun2socks_ready"),
            name=opt("tun2socks_name"),
            version_command=opt("tun2socks_version_command"),
            harness_configures_device=bool(opt("tun2socks_harness_configures_device")),
        )
    except (ValueError, TypeError) as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_cmdline_main(config: pytest.Config) -> None:
    """One behaviour at a time where they all share one host (see shares_one_host).

    Runs after pytest-xdist's own hook (``tryfirst``) has turned ``-n N`` into N worker
    specs and before the session starts them, so no worker is ever created.
    """
    if not config.pluginmanager.hasplugin("xdist"):
        return
    if not shares_one_host(config.getoption("topology"), config.getoption("single_host")):
        return
    workers = len(config.option.tx or ()) if config.option.dist != "no" else 0
    if workers < 2:  # one worker already runs one behaviour at a time
        return
    config.option.numprocesses, config.option.dist, config.option.tx = 0, "no", []
    config.stash[_ONE_AT_A_TIME_KEY] = ONE_AT_A_TIME_NOTE.format(workers=workers)


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    try:  # testinfra has no backend entry points: register ours (netns) in its map
        from harness.testinfra_backends import register

        register()
    except (ImportError, RuntimeError):
        pass

    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    choice = adapter_choice_from(config)
    if workerinput is not None and "ztun_seed" in workerinput:
        seed = int(workerinput["ztun_seed"])
        session_tag = str(workerinput["ztun_session"])
        run_id = str(workerinput["ztun_run"])
        worker_id: str | None = str(workerinput.get("workerid"))
    else:
        opt_seed = config.getoption("seed")
        seed = (
            int(opt_seed) if opt_seed is not None else random.SystemRandom().getrandbits(SEED_BITS)
        )
        session_tag = Namer().session_tag
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{session_tag}"
        worker_id = None
    if (
        config.getoption("topology") == "single"
        and config.getoption("single_host") == "local"
        and sys.platform == "linux"
    ):
        from harness.hosts.local import in_root_netns

        if in_root_netns():
            raise pytest.UsageError(
                "--single-host local would give this machine's root network namespace a TUN "
                "and routes: run it inside a namespace you created (ip netns exec NAME ...)"
            )
    try:
        set_time_scale(float(config.getoption("time_scale")))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    root_opt = config.getoption("artifacts")
    root = Path(root_opt) if root_opt else config.rootpath / "artifacts"
    report_opt = config.getoption("report")
    st = HarnessState(
        seed=seed,
        run_id=run_id,
        run_dir=root.resolve() / run_id,
        # "master" explicitly: a nested pytest must not inherit PYTEST_XDIST_WORKER.
        namer=Namer(session_tag, worker_id or "master"),
        worker_id=worker_id,
        xdist_controller=bool(workerinput is None and getattr(config.option, "numprocesses", None)),
        keep=bool(config.getoption("keep_pcaps")),
        impl=choice.name,
        adapter=choice,
        topology=str(config.getoption("topology")),
        single_host=str(config.getoption("single_host")),
        report_dir=Path(report_opt).resolve() if report_opt else None,
    )
    set_state(config, st)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(st), "ztun_harness_xdist")
    interrupt_on(signal.SIGTERM)  # finalizers (namespace removal) run on SIGTERM too
    conformance.register(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    factor = time_scale()
    for item in items:
        if item.get_closest_marker("optional") is not None:
            # Runs, and reports its outcome, but never fails the run (see MARKERS).
            item.add_marker(
                pytest.mark.xfail(reason="optional behaviour: may differ by design", strict=False)
            )
        timeout = item.get_closest_marker("timeout")
        if factor != 1.0 and timeout is not None and timeout.args:
            # Prepended, so it is the closest marker pytest-timeout reads.
            item.add_marker(pytest.mark.timeout(float(timeout.args[0]) * factor), append=False)


class _XdistHooks:
    """Registered only when xdist is present (its hooks are unknown otherwise)."""

    def __init__(self, st: HarnessState) -> None:
        self.st = st

    def pytest_configure_node(self, node: Any) -> None:
        # Every worker shares the controller's seed, session tag and run folder.
        node.workerinput["ztun_seed"] = self.st.seed
        node.workerinput["ztun_session"] = self.st.namer.session_tag
        node.workerinput["ztun_run"] = self.st.run_id

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        reported = output.get("ztun_leaks")
        if reported:
            self.st.leaks.merge(Leaks.from_dict(reported))


# --------------------------------------------------------------------------- header


def _first_line(argv: list[str]) -> str:
    if not have_tool(argv[0]):
        return "missing"
    result = run_local(argv, timeout=10.0)
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@functools.cache
def _versions() -> str:
    return ", ".join(
        [
            "tcpdump "
            + _first_line([tool("tcpdump"), "--version"]).removeprefix("tcpdump version "),
            f"iproute2 {_first_line([tool('ip'), '-V']).rsplit('iproute2-', 1)[-1].split(',')[0]}",
            f"scapy {_dist_version('scapy')}",
            f"pyroute2 {_dist_version('pyroute2')}",
        ]
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    st = state(config)
    lines = [
        f"ztun harness: seed {st.seed} (reproduce with --seed {st.seed}); "
        f"tun2socks under test: {st.impl}",
        f"kernel {platform.release()}; {_versions()}",
        f"faults: {netem_support().describe()}; artifacts: {st.run_dir}",
    ]
    if not is_root():
        lines.append("not root: netns tests will be skipped")
    if missing := missing_tools_header():
        lines.append(missing)
    if st.stale_removed:
        lines.append("removed leftovers of dead runs:\n  " + st.stale_removed.replace("\n", "\n  "))
    return lines


# --------------------------------------------------------------------------- session


def pytest_sessionstart(session: pytest.Session) -> None:
    st = state(session.config)
    note = session.config.stash.get(_ONE_AT_A_TIME_KEY, "")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if note and reporter is not None:
        reporter.write_line(note)  # said once, at any verbosity (-q hides the header)
    startup_cleanup = os.environ.get(STARTUP_CLEANUP_ENV, "1") != "0"
    if st.worker_id is None and is_root() and startup_cleanup:
        report = cleanup(NAME_PREFIX)  # only owners that are gone; live runs are kept
        if report.removed_namespaces or report.removed_links:
            st.stale_removed = report.render()
    if is_root():
        st.baseline = RootSnapshot.take()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    st = state(config)
    if is_root():
        own = find_leaks(
            st.namer.prefix, baseline=st.baseline, scan_children=not st.xdist_controller
        )
        if st.xdist_controller:
            # Workers are down: anything under the session prefix is a leak.
            own.namespaces += [
                n for n in list_netns(st.namer.session_prefix) if n not in own.namespaces
            ]
        st.leaks.merge(own)
    leaks = st.leaks
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["ztun_leaks"] = leaks.as_dict()
    elif leaks and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if leaks:
        st.leaks_text = leaks.render()
        # Clean up after reporting, so the next run starts clean.
        kill_live_processes()
        for ns in leaks.namespaces:
            with contextlib.suppress(Exception):
                remove_netns(ns)
    release_owner(st.namer.prefix)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    st = state(config)
    if getattr(config, "workeroutput", None) is not None or not st.leaks:
        return
    terminalreporter.section("ztun leak check FAILED", sep="=", red=True, bold=True)
    terminalreporter.line(st.leaks_text or st.leaks.render())
    terminalreporter.line("(removed now; a leak is a harness or test bug: fix its teardown)")


# --------------------------------------------------------------------------- per test


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    st = state(item.config)
    test = TestArtifacts(
        nodeid=item.nodeid,
        dir=st.run_dir / safe_test_dirname(item.nodeid),
        seed=derive_seed(st.seed, item.nodeid),
    )
    item.stash[_TEST_KEY] = test
    item.stash[_FAILED_KEY] = False
    artifacts_mod.activate(test)
    if item.get_closest_marker("netns") is not None:
        _require_root()
        require_tool("ip")
    if item.get_closest_marker("linux") is not None and sys.platform != "linux":
        pytest.skip(f"Linux only (this is {sys.platform})")


def _report_section(item: pytest.Item, test: TestArtifacts) -> str:
    st = state(item.config)
    lines = [
        f"folder: {test.dir}",
        f"seed: run {st.seed}, test {test.seed}  (pytest --seed {st.seed} '{item.nodeid}')",
    ]
    for cap in test.captures:
        lines.append(f"pcap: {cap.summary()}")
    for log in test.logs():
        tail = ""
        with contextlib.suppress(OSError):
            text = log.read_text(errors="replace").rstrip().splitlines()
            tail = "\n".join(f"    {line}" for line in text[-LOG_TAIL_IN_REPORT:])
        lines.append(f"log: {log}" + (f"\n{tail}" if tail else " (empty)"))
    for att in test.attachments:
        where = f" {att.path}" if att.path else ""
        body = textwrap.indent("\n" + att.text.rstrip(), "    ") if att.text else ""
        lines.append(f"{att.title}:{where}{body}")
    return "\n".join(lines)


def _write_seed_file(item: pytest.Item, test: TestArtifacts) -> None:
    st = state(item.config)
    test.path("seed.txt").write_text(
        f"run seed {st.seed}\ntest seed {test.seed}\n"
        f"reproduce: pytest --seed {st.seed} {st.adapter.describe_options()} '{item.nodeid}'\n"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    test = item.stash.get(_TEST_KEY, None)
    if test is None:
        return report
    # An optional behaviour's failure is an xfail: its evidence is kept like a failure's.
    if report.failed or (report.skipped and hasattr(report, "wasxfail")):
        item.stash[_FAILED_KEY] = True
        _write_seed_file(item, test)
        report.sections.append((REPORT_SECTION, _report_section(item, test)))
    if report.when == "teardown":
        artifacts_mod.deactivate()
        st = state(item.config)
        if not item.stash.get(_FAILED_KEY, False) and not st.keep:
            shutil.rmtree(test.dir, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    """The run's seed (``--seed``; random by default and printed in the header)."""
    return state(request.config).seed


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """This test's RNG: seeded from the run seed and the node id (order-independent)."""
    return random.Random(derive_seed(state(request.config).seed, request.node.nodeid))


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> TestArtifacts:
    """The test's artifact folder/registry (attach evidence with ``.attach(...)``)."""
    test: TestArtifacts = request.node.stash[_TEST_KEY]
    return test


@pytest.fixture(scope="session")
def tun2socks_name(request: pytest.FixtureRequest) -> str:
    """The implementation under test's name (its column in the report)."""
    return state(request.config).impl


@pytest.fixture
def implementation(request: pytest.FixtureRequest) -> Tun2Socks:
    """The adapter the ``--tun2socks*`` options chose, fresh for this test."""
    return state(request.config).adapter.build()


@pytest.fixture
def require_root() -> None:
    """Skip unless root (namespaces need CAP_SYS_ADMIN)."""
    _require_root()


TopologyFactory = Callable[..., Topology]


@pytest.fixture
def topology_factory(
    request: pytest.FixtureRequest, artifacts: TestArtifacts
) -> Iterator[TopologyFactory]:
    """``topology_factory(spec=None) -> Topology`` (default: client/proxy/server).

    Every topology built is torn down at the end of the test (also on failure or
    Ctrl-C), newest first, and its removal verified.
    """
    _require_root()
    st = state(request.config)
    built: list[Topology] = []

    def factory(spec: TopologySpec | None = None) -> Topology:
        scope = st.namer.scope()
        folder = artifacts.dir if not built else artifacts.dir / f"topology-{len(built) + 1}"
        topo = Topology(spec or client_proxy_server(), scope=scope, log_dir=folder)
        built.append(topo)
        artifacts.add_log_dir(folder)
        artifacts.attach("topology", text=topo.describe())
        return topo

    yield factory
    errors: list[BaseException] = []
    while built:
        try:
            built.pop().close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def single_host(request: pytest.FixtureRequest, artifacts: TestArtifacts) -> Iterator[Host]:
    """The one host of the single topology (``--single-host``): a fresh namespace of its own
    on Linux, never the root namespace; this machine where there are no namespaces."""
    if single_host_kind(state(request.config).single_host) == "namespace":
        factory: TopologyFactory = request.getfixturevalue("topology_factory")
        yield factory(TopologySpec.of(hosts=["host"])).host("host")
        return
    from harness.hosts.local import LocalHost

    host = LocalHost("local", log_dir=artifacts.dir / "local")  # refuses the root namespace
    artifacts.add_log_dir(host.log_dir)
    try:
        yield host
    finally:
        host.close()


@pytest.fixture
def topology(topology_factory: TopologyFactory) -> Topology:
    """The default topology: client -- proxy -- server (proxy does not forward)."""
    return topology_factory()


@pytest.fixture
def netem(rng: random.Random) -> Iterator[Faults]:
    """``netem(host, ifname, loss_pct=.., delay_ms=.., mtu=..)``: degrade a link, seeded.

    Skips with a reason when the kernel lacks what a fault needs (see harness.faults).
    """
    faults = Faults(random.Random(rng.getrandbits(64)))
    yield faults
    with contextlib.suppress(Exception):
        faults.clear()
