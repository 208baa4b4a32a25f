"""Log settings: the rate limit (time from the records), JSON lines, reopening a rotated
file, per-flow lines built only when asked for, and switching settings in place."""

from __future__ import annotations

import json
import logging
import os

import pytest

from ztun.flows import FlowTable
from ztun.logs import (
    JsonFormatter,
    LogSettings,
    LogSetup,
    RateLimit,
    TextFormatter,
    flow_fields,
    log_flow,
)


def record(
    msg: str, created: float, level: int = logging.WARNING, *args: object
) -> logging.LogRecord:
    rec = logging.LogRecord("ztun", level, __file__, 1, msg, args, None)
    rec.created = created
    return rec


def test_rate_limit_lets_a_burst_through_then_counts() -> None:
    limit = RateLimit(burst=3, window=10.0)
    seen = [
        limit.filter(record("TCP %s failed", 100.0 + i * 0.1, logging.WARNING, i)) for i in range(8)
    ]
    assert seen == [True, True, True, False, False, False, False, False]
    assert limit.pending() == [("TCP %s failed", 5)]
    # Another kind is not held back by the first.
    assert limit.filter(record("UDP %s failed", 101.0))
    # Below the level: never limited.
    assert all(limit.filter(record("debug %s", 101.0, logging.INFO, i)) for i in range(10))
    # The window ends: the next line goes out and carries the count.
    later = record("TCP %s failed", 110.5, logging.WARNING, 9)
    assert limit.filter(later)
    assert later.suppressed == 5  # type: ignore[attr-defined]
    assert "(5 more like this suppressed)" in TextFormatter().format(later)
    assert limit.pending() == []


def test_json_lines_carry_fields() -> None:
    rec = record("hello %s", 1700000000.25, logging.ERROR, "world")
    rec.fields = {"flow": {"id": 3}}  # type: ignore[attr-defined]
    entry = json.loads(JsonFormatter().format(rec))
    assert entry == {
        "time": "2023-11-14T22:13:20.250+00:00",
        "level": "error",
        "logger": "ztun",
        "message": "hello world",
        "flow": {"id": 3},
    }


class Meter:
    bytes_up, bytes_down, half_closed = 12, 3400, False


def test_flow_line_is_made_only_when_the_option_is_on(caplog) -> None:  # type: ignore[no-untyped-def]
    quiet = FlowTable()  # --log-flows off: nothing is handed over, nothing formatted
    loud = FlowTable(on_closed=log_flow)
    for table in (quiet, loud):
        rec = table.add("tcp", ("10.0.0.2", 40000), ("2001:db8::1", 443), 10.0, domain="a.example")
        table.routed(rec, "proxy1")
        table.connected(rec, Meter())
        with caplog.at_level(logging.INFO, logger="ztun"):
            table.remove(rec, 12.5, "reset")
    lines = [r for r in caplog.records if r.getMessage().startswith("flow closed")]
    assert len(lines) == 1
    assert lines[0].getMessage() == (
        "flow closed id=1 proto=tcp src=10.0.0.2:40000 dst=[2001:db8::1]:443 domain=a.example "
        "outbound=proxy1 up=12 down=3400 duration=2.500s reason=reset"
    )
    assert lines[0].fields["flow"] == flow_fields(rec)  # type: ignore[attr-defined]


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    """A LogSetup on the root logger, its handler removed again afterwards."""
    root = logging.getLogger()
    level = root.level
    made = LogSetup()
    yield made
    if made.handler is not None:
        root.removeHandler(made.handler)
        made.handler.close()
    root.setLevel(level)


def test_file_reopened_after_rotation_and_settings_switch_in_place(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ztun.log"
    log = logging.getLogger("ztun.test")
    setup.apply(LogSettings(level="info", file=path))
    log.info("first")
    log.debug("hidden")
    os.rename(path, tmp_path / "ztun.log.1")  # logrotate moves it ...
    log.info("second")  # ... lines still go to the moved file until the signal
    setup.reopen()  # what SIGUSR1 does
    log.info("third")
    rotated = (tmp_path / "ztun.log.1").read_text()
    assert "first" in rotated and "second" in rotated and "hidden" not in rotated
    assert "third" in path.read_text() and "second" not in path.read_text()
    setup.apply(LogSettings(level="debug", file=path, format="json"))  # a reload
    log.debug("now json")
    last = json.loads(path.read_text().splitlines()[-1])
    assert (last["message"], last["level"]) == ("now json", "debug")


def test_an_unwritable_log_file_changes_nothing(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ok.log"
    setup.apply(LogSettings(file=path))
    with pytest.raises(OSError):
        setup.apply(LogSettings(file=tmp_path / "missing" / "dir" / "x.log"))
    logging.getLogger("ztun.test").warning("still here")
    assert "still here" in path.read_text()
