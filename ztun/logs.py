"""Where ztun's log lines go and how they look: `--log-file`, `--log-format`, `--log-flows`.

- `--log-file PATH` appends to PATH and reopens it on SIGUSR1, so logrotate can move the
  file away and signal (`postrotate kill -USR1 ...`) without losing a line;
- `--log-format json` writes one JSON object per line (`time`, `level`, `logger`,
  `message`, plus structured fields such as a closed flow's);
- `--log-flows` logs one line per closed flow; the line is built only then (the engine
  hands the closed `FlowRecord` to `log_flow` only when the option is on);
- repeated warnings and errors of one kind are rate-limited: at most BURST lines per
  WINDOW seconds per message template, and the next line of that kind says how many were
  suppressed in between (`RateLimit`: time comes from the record, so it is testable).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .flows import FlowRecord

log = logging.getLogger("ztun")

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BURST = 5  # lines of one kind per window before suppression starts
WINDOW = 10.0  # seconds
MAX_KINDS = 1024  # message kinds tracked at once (bounded memory)


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    file: Path | None = None  # None: stderr
    format: str = "text"
    flows: bool = False


class RateLimit(logging.Filter):
    """Lets through at most `burst` records per `window` seconds of each kind (logger,
    level, message template) at `level` or above; the first record let through after a
    suppression carries the count as `record.suppressed`."""

    def __init__(
        self, burst: int = BURST, window: float = WINDOW, level: int = logging.WARNING
    ) -> None:
        super().__init__()
        self.burst, self.window, self.level = burst, window, level
        # kind -> [window start, records let through, records suppressed]
        self._kinds: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = record.created
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.window:
            if state is None and len(self._kinds) >= MAX_KINDS:
                self._kinds.clear()
            suppressed = int(state[2]) if state is not None else 0
            self._kinds[kind] = [now, 1, 0]
            if suppressed:
                record.suppressed = suppressed
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False

    def pending(self) -> list[tuple[str, int]]:
        """(message template, suppressed count) of kinds with lines not yet reported."""
        return [(kind[2], int(s[2])) for kind, s in self._kinds.items() if s[2]]


def _suffix(record: logging.LogRecord) -> str:
    suppressed = getattr(record, "suppressed", 0)
    return f" ({suppressed} more like this suppressed)" if suppressed else ""


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) + _suffix(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `record.fields` (a dict) adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            entry["suppressed"] = suppressed
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class ReopenableFileHandler(logging.FileHandler):
    """A file handler that `reopen()`s its path: after logrotate moved the file, the
    next line goes to a new file at the same path."""

    def reopen(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # always set by Handler.__init__
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()


class LogSetup:
    """The root handler ztun installs, changed in place by `apply` (reload)."""

    def __init__(self) -> None:
        self.settings: LogSettings | None = None
        self.handler: logging.Handler | None = None
        self.rate_limit = RateLimit()

    def apply(self, settings: LogSettings) -> None:
        """Install `settings` (OSError: the log file cannot be opened; nothing changed)."""
        root = logging.getLogger()
        handler = self.handler
        if self.settings is None or settings.file != self.settings.file or handler is None:
            new = (
                ReopenableFileHandler(settings.file, encoding="utf-8")
                if settings.file is not None
                else logging.StreamHandler(sys.stderr)
            )
            new.addFilter(self.rate_limit)
            if handler is not None:
                # Filters others added (a worker's log tag) come along.
                for extra in handler.filters:
                    if extra is not self.rate_limit:
                        new.addFilter(extra)
                root.removeHandler(handler)
                handler.close()
            root.addHandler(new)
            handler = self.handler = new
        handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
        root.setLevel(getattr(logging, settings.level.upper()))
        self.settings = settings

    def reopen(self) -> None:
        if isinstance(self.handler, ReopenableFileHandler):
            self.handler.reopen()

    def report_suppressed(self) -> None:
        """At exit: what the rate limit held back and never got to report."""
        for template, count in self.rate_limit.pending():
            log.info("%d more lines like %r were suppressed", count, template)


#: The process's log setup (one per process: workers inherit it across fork).
SETUP = LogSetup()


def flow_fields(record: FlowRecord) -> dict[str, Any]:
    duration = (record.ended or record.started) - record.started
    return {
        "id": record.id,
        "proto": record.proto,
        "src": record.src,
        "dst": record.dst,
        "domain": record.domain,
        "outbound": record.outbound,
        "bytes_up": record.bytes_up,
        "bytes_down": record.bytes_down,
        "duration_s": round(duration, 3),
        "reason": record.reason,
    }


def log_flow(record: FlowRecord) -> None:
    """The `--log-flows` line of a closed flow (called only when that option is on)."""
    fields = flow_fields(record)
    log.info(
        "flow closed id=%s proto=%s src=%s dst=%s domain=%s outbound=%s up=%d down=%d "
        "duration=%.3fs reason=%s",
        fields["id"],
        fields["proto"],
        fields["src"],
        fields["dst"],
        fields["domain"] or "-",
        fields["outbound"] or "-",
        fields["bytes_up"],
        fields["bytes_down"],
        fields["duration_s"],
        fields["reason"],
        extra={"fields": {"event": "flow_closed", "flow": fields}},
    )
