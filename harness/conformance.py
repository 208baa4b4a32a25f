"""The conformance table of a run: one outcome per behaviour, written as a report.

Registered by the harness plugin in every session (:func:`register`); it folds the reports
of every test marked ``conformance`` into one outcome per behaviour (pass, fail, error,
skip, with the reason), prints the table at the end of the session and writes the report
(:mod:`harness.report`: report.json, report.md, report.html):

* always to ``<artifacts>/<run>/`` (this run's column only);
* with ``--report DIR`` also to DIR (``ztun-harness certify`` sets it).

Several runs (one per implementation) are put side by side afterwards with
``ztun-harness report --merge DIR...``.

A behaviour is a test function (its name without ``test_``, with its parameter id, if
any); its *sentence* -- what it checks and why a failure is a defect -- is the first
paragraph of its docstring. A behaviour marked ``optional`` may legitimately differ
between implementations (answering every ICMP echo, say): the plugin runs it as a
non-strict xfail, so its failure never fails the run, and the report shows it as
"fail" in an optional row.

xdist: workers' reports reach the controller's ``pytest_runtest_logreport``, so the
controller alone collects, prints and writes; workers only tag their reports. The
implementation's version, the behaviour's sentence and its optional flag travel as
``user_properties`` entries, which xdist carries with the report.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import report as report_mod
from harness.artifacts import safe_test_dirname
from harness.state import state

PLUGIN_NAME = "ztun_conformance_summary"
MARKER = "conformance"
OPTIONAL_MARKER = "optional"
VERSION_PROPERTY = "impl_version"
MARKED_PROPERTY = "conformance_behaviour"
DESCRIPTION_PROPERTY = "conformance_description"
OPTIONAL_PROPERTY = "conformance_optional"
REASON_CHARS = 2000
"""The report keeps this much of a reason (the terminal table cuts it shorter)."""


def register(config: pytest.Config) -> None:
    """Start collecting for this session (idempotent)."""
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(ConformanceSummary(config), PLUGIN_NAME)


def behaviour_of(nodeid: str) -> str:
    """``harness/suite/test_x.py::test_tcp_open[v6]`` -> ``tcp_open[v6]``."""
    name = nodeid.rpartition("::")[2]
    return name.removeprefix("test_")


def description_of(item: pytest.Item) -> str:
    """The first paragraph of the test's docstring, on one line."""
    function = getattr(item, "function", None)
    text = (inspect.getdoc(function) if function is not None else None) or ""
    paragraph = text.strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def _reason(report: pytest.TestReport) -> str:
    """Why a test skipped or failed, in one line a reader can act on."""
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        message = str(getattr(crash, "message", ""))
        # "AssertionError: <what>" -> "<what>"; keep the type for anything unexpected.
        message = message.removeprefix("AssertionError: ")
        # pytest appends the introspected "assert <expr>" after a custom message.
        message = message.split("\nassert ", 1)[0].removeprefix("assert ")
        return report_mod.first_line(message, REASON_CHARS)
    return report_mod.first_line(str(longrepr or ""), REASON_CHARS)


def _outcome(report: pytest.TestReport) -> str | None:
    """The behaviour's outcome from one phase's report (None: the next phase decides)."""
    optional_ran = hasattr(report, "wasxfail")  # an optional behaviour's call phase
    if report.when == "setup":
        if report.passed:
            return None
        return report_mod.SKIP if report.skipped else report_mod.ERROR
    if report.when == "call":
        if report.passed:
            return report_mod.PASS
        if report.skipped:
            return report_mod.FAIL if optional_ran else report_mod.SKIP
        return report_mod.FAIL
    return report_mod.ERROR if report.failed else None  # teardown


class ConformanceSummary:
    """Collects conformance outcomes (on the controller, or in a plain run)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.active = getattr(config, "workerinput", None) is None
        st = state(config)
        self.run_dir = st.run_dir
        self.impl = st.impl
        self.column: dict[str, Any] = {
            "version": "",
            "run": st.run_id,
            "seed": st.seed,
            "topology": st.topology,
            "finished": "",
            "results": {},
        }
        self.order: list[str] = []
        self.behaviours: dict[str, dict[str, Any]] = {}
        self.document: report_mod.Document | None = None
        self.written: list[Path] = []
        self._setup_seconds: dict[str, float] = {}

    # ---------------------------------------------------------------- collection order

    def _remember_order(self, nodeids: Sequence[str]) -> None:
        """Rows follow collection order (ids of other tests never get a result, and rows
        without one are left out)."""
        for nodeid in nodeids:
            name = behaviour_of(nodeid)
            if name not in self.order:
                self.order.append(name)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._remember_order([i.nodeid for i in session.items if i.get_closest_marker(MARKER)])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self._remember_order(ids)

    # ---------------------------------------------------------------- reports

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Tag the reports of marked tests (on workers too: the tags travel with them).

        ``report.keywords`` cannot tell: it also holds the names of the test's parents,
        so a folder named "conformance" would mark every test in it.
        """
        report = yield
        if item.get_closest_marker(MARKER) is not None:
            report.user_properties += [
                (MARKED_PROPERTY, True),
                (DESCRIPTION_PROPERTY, description_of(item)),
                (OPTIONAL_PROPERTY, item.get_closest_marker(OPTIONAL_MARKER) is not None),
            ]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.active or (MARKED_PROPERTY, True) not in report.user_properties:
            return
        properties = dict(report.user_properties)
        if properties.get(VERSION_PROPERTY):
            self.column["version"] = str(properties[VERSION_PROPERTY])
        name = behaviour_of(report.nodeid)
        if name not in self.order:
            self.order.append(name)
        self.behaviours[name] = {
            "id": name,
            "description": str(properties.get(DESCRIPTION_PROPERTY, "")),
            "optional": bool(properties.get(OPTIONAL_PROPERTY, False)),
        }
        results: dict[str, dict[str, Any]] = self.column["results"]
        current = results.get(name)
        outcome = _outcome(report)
        if report.when == "setup" and outcome is None:
            self._setup_seconds[report.nodeid] = report.duration
            return
        if report.when == "teardown" and (
            outcome is None or current is None or current["outcome"] != report_mod.PASS
        ):
            if current is not None:  # only a failure turns a pass into an error
                current["duration"] += report.duration
            return
        assert outcome is not None
        before = current["duration"] if current else self._setup_seconds.pop(report.nodeid, 0.0)
        results[name] = {
            "outcome": outcome,
            "reason": "" if outcome == report_mod.PASS else _reason(report),
            "nodeid": report.nodeid,
            "phase": report.when,
            "duration": round(report.duration + before, 3),
            "artifacts": [],
        }

    # ---------------------------------------------------------------- output

    def _artifacts(self, nodeid: str) -> list[str]:
        """The files a test left (a failing test's always; a passing one's with
        --keep-pcaps): pcaps, logs, configs, the seed."""
        folder = self.run_dir / safe_test_dirname(nodeid)
        if not folder.is_dir():
            return []
        return [str(p) for p in sorted(folder.rglob("*")) if p.is_file()]

    def build(self) -> report_mod.Document:
        document = report_mod.empty()
        document["behaviours"] = [
            self.behaviours[b] for b in self.order if b in self.column["results"]
        ]
        for result in self.column["results"].values():
            result["artifacts"] = self._artifacts(result["nodeid"])
        document["implementations"][self.impl] = self.column
        return document

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.active or not self.column["results"]:
            return
        self.column["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        self.document = self.build()
        folders = [self.run_dir]
        extra = state(self.config).report_dir
        if extra is not None:
            folders.append(extra)
        for folder in folders:
            self.written += report_mod.write(self.document, folder)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.active or self.document is None:
            return
        tr = terminalreporter
        tr.section("tun2socks conformance", sep="=", bold=True)
        for line in report_mod.render_text(self.document):
            tr.line(line)
        for folder in dict.fromkeys(path.parent for path in self.written):
            tr.line(f"written: {folder}/report.{{json,md,html}}")
