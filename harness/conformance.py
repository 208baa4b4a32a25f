"""The conformance table: behaviour x implementation, pass / fail / skip with the reason.

A pytest plugin (this module; the repository's root conftest lists it in
``pytest_plugins``, others can add ``-p harness.conformance``) that folds the reports of
every test marked ``conformance`` into one outcome per behaviour, prints the table at the
end of the session and writes it as JSON:

* always to ``<artifacts>/<run>/conformance.json`` (this run's column only);
* with ``--conformance-json PATH`` also to PATH, *merged* with the columns of other
  implementations already in that file -- run the suite once per ``--tun2socks`` into the
  same file and the table printed by the last run shows them side by side.

Why a plugin module and not hooks in ``tests/conformance/conftest.py``: under xdist the
controller does not collect, so it loads only *initial* conftests (those of the paths on
the command line) -- ``pytest -n 2`` from the root would never see the hooks, and a
conftest's command-line options exist only when it is initial.

xdist: workers' reports reach the controller's ``pytest_runtest_logreport``, so the
controller alone collects, prints and writes; workers do nothing.  The behaviour name is
the test function's name without ``test_`` (and with its parameter id, if any); the
implementation's version arrives as a ``user_properties`` entry (``impl_version``), which
xdist carries with the report.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.artifacts import safe_test_dirname
from harness.plugin import state

PLUGIN_NAME = "ztun_conformance_summary"
MARKER = "conformance"
VERSION_PROPERTY = "impl_version"
MARKED_PROPERTY = "conformance_behaviour"
JSON_NAME = "conformance.json"
SCHEMA = 1
REASON_CHARS = 160
"""A reason longer than this is cut in the terminal (the JSON keeps REASON_JSON_CHARS)."""
REASON_JSON_CHARS = 2000

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
_CELL = {PASSED: "pass", FAILED: "FAIL", ERROR: "ERROR", SKIPPED: "skip"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("ztun").addoption(
        "--conformance-json",
        default=None,
        metavar="PATH",
        help="also write the conformance table to PATH, merged with the other "
        "implementations' columns already there (always written to "
        "<artifacts>/<run>/conformance.json)",
    )


@pytest.hookimpl(trylast=True)  # after harness.plugin has set up its state
def pytest_configure(config: pytest.Config) -> None:
    register(config)


def register(config: pytest.Config) -> None:
    """Start collecting for this session (idempotent)."""
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(ConformanceSummary(config), PLUGIN_NAME)


def behaviour_of(nodeid: str) -> str:
    """``tests/conformance/test_x.py::test_tcp_open[v6]`` -> ``tcp_open[v6]``."""
    name = nodeid.rpartition("::")[2]
    return name.removeprefix("test_")


def _first_line(text: str, limit: int) -> str:
    """The message on one line (its lines joined by " | "), cut to ``limit``."""
    line = " | ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
        return _first_line(message, REASON_JSON_CHARS)
    return _first_line(str(longrepr or ""), REASON_JSON_CHARS)


@dataclass
class Result:
    """One behaviour's outcome for the implementation of this run."""

    outcome: str
    nodeid: str
    reason: str = ""
    duration: float = 0.0
    phase: str = "call"
    artifacts: str | None = None


@dataclass
class Column:
    impl: str
    version: str = ""
    run: str = ""
    seed: int | None = None
    finished: str = ""
    results: dict[str, Result] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["results"] = {k: asdict(v) for k, v in self.results.items()}
        return data


class ConformanceSummary:
    """Collects conformance outcomes (on the controller, or in a plain run)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.active = getattr(config, "workerinput", None) is None
        st = state(config)
        self.run_dir = st.run_dir
        self.column = Column(impl=st.impl, run=st.run_id, seed=st.seed)
        self.order: list[str] = []
        self.json_paths: list[Path] = []
        self.merged: dict[str, dict[str, Any]] = {}
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
        """Tag the reports of marked tests (on workers too: the tag travels with them).

        ``report.keywords`` cannot tell: it also holds the names of the test's parents,
        so a folder named "conformance" would mark every test in it.
        """
        report = yield
        if item.get_closest_marker(MARKER) is not None:
            report.user_properties.append((MARKED_PROPERTY, True))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.active or (MARKED_PROPERTY, True) not in report.user_properties:
            return
        for key, value in report.user_properties:
            if key == VERSION_PROPERTY and value:
                self.column.version = str(value)
        name = behaviour_of(report.nodeid)
        if name not in self.order:
            self.order.append(name)
        current = self.column.results.get(name)
        if report.when == "setup":
            if report.passed:
                self._setup_seconds[report.nodeid] = report.duration
                return  # the call decides
            outcome = SKIPPED if report.skipped else ERROR
        elif report.when == "call":
            outcome = PASSED if report.passed else SKIPPED if report.skipped else FAILED
        else:  # teardown: only a failure changes a verdict
            if not report.failed or current is None or current.outcome != PASSED:
                if current is not None:
                    current.duration += report.duration
                return
            outcome = ERROR
        before = current.duration if current else self._setup_seconds.pop(report.nodeid, 0.0)
        result = Result(
            outcome=outcome,
            nodeid=report.nodeid,
            phase=report.when,
            duration=report.duration + before,
        )
        if outcome != PASSED:
            result.reason = _reason(report)
        if outcome in (FAILED, ERROR):
            result.artifacts = str(self.run_dir / safe_test_dirname(report.nodeid))
        self.column.results[name] = result

    # ---------------------------------------------------------------- output

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.active or not self.column.results:
            return
        self.column.finished = datetime.datetime.now().isoformat(timespec="seconds")
        this_run = self.run_dir / JSON_NAME
        self._write(this_run, {})
        self.json_paths.append(this_run)
        extra = getattr(self.config.option, "conformance_json", None)
        if extra:
            path = Path(extra).resolve()
            self.merged = self._load_others(path)
            self._write(path, self.merged)
            self.json_paths.append(path)

    def _load_others(self, path: Path) -> dict[str, dict[str, Any]]:
        """Columns of other implementations from an earlier run's file (if readable)."""
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if data.get("schema") == SCHEMA:
                columns = data.get("implementations", {})
                return {k: v for k, v in columns.items() if k != self.column.impl}
        return {}

    def _document(self, others: dict[str, dict[str, Any]]) -> dict[str, Any]:
        columns = {**others, self.column.impl: self.column.as_dict()}
        order = [b for b in self.order if b in self.column.results]
        for column in columns.values():
            order += [b for b in column.get("results", {}) if b not in order]
        return {"schema": SCHEMA, "behaviours": order, "implementations": columns}

    def _write(self, path: Path, others: dict[str, dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._document(others), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)  # a reader never sees half a file

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.active or not self.column.results:
            return
        document = self._document(self.merged)
        tr = terminalreporter
        tr.section("tun2socks conformance", sep="=", bold=True)
        for line in render_table(document):
            tr.line(line)
        for path in self.json_paths:
            tr.line(f"written: {path}")


def render_table(document: dict[str, Any]) -> list[str]:
    """The table as text lines: one row per behaviour, one column per implementation,
    then the reasons of every cell that is not a pass (numbered notes)."""
    columns: dict[str, dict[str, Any]] = document["implementations"]
    names = list(columns)
    behaviours: list[str] = document["behaviours"]
    notes: list[str] = []
    number = 0
    rows: list[list[str]] = []
    for behaviour in behaviours:
        row = [behaviour]
        for impl in names:
            result = columns[impl].get("results", {}).get(behaviour)
            if result is None:
                row.append("-")
                continue
            cell = _CELL.get(result["outcome"], result["outcome"])
            if result["outcome"] != PASSED:
                number += 1
                notes.append(
                    f"[{number}] {impl} / {behaviour}: "
                    f"{_first_line(result.get('reason', ''), REASON_CHARS)}"
                )
                if result.get("artifacts"):
                    notes.append(f"    artifacts: {result['artifacts']}")
                cell += f" [{number}]"
            row.append(cell)
        rows.append(row)
    header = ["behaviour", *names]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    totals = []
    for impl in names:
        results = columns[impl].get("results", {}).values()
        counts = {
            o: sum(1 for r in results if r["outcome"] == o)
            for o in (PASSED, FAILED, ERROR, SKIPPED)
        }
        version = columns[impl].get("version") or "version unknown"
        totals.append(
            f"{impl} ({version}; run {columns[impl].get('run', '?')}): "
            + ", ".join(f"{n} {o}" for o, n in counts.items() if n)
        )
    lines += ["", *totals]
    if notes:
        lines += ["", *notes]
    return lines
