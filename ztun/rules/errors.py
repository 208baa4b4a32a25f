"""Config errors that name the file, the line and the key, and say what is wrong."""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]
COMMAND_LINE = "<command line>"


def format_key(path: KeyPath) -> str:
    """``("rules", 2, "action")`` -> ``rules[2].action`` (0-based, as in the TOML arrays)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def kind_name(kind: type) -> str:
    """A TOML value's type as an error message names it (``must be a string, not a
    list``)."""
    return {
        bool: "true/false",
        int: "an integer",
        str: "a string",
        float: "a number",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


class ConfigError(ValueError):
    """A bad config value; the CLI prints ``str(err)`` and exits 2.

    ``file`` is the config path (or ``<command line>`` for a flag), ``line`` the 1-based line
    of the offending key when it could be found, ``key`` its dotted path.
    """

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)


def _split_key(raw: str) -> list[str]:
    return [
        p.strip().strip("\"'")
        for p in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", raw)
    ]


def locate(text: str, path: KeyPath) -> int | None:
    """The 1-based line defining ``path`` in TOML ``text``, or of its nearest parent.

    A line-level scan (tomllib keeps no positions): tracks ``[table]`` and ``[[array]]``
    headers (counting array entries) and matches ``key =`` lines, dotted keys included.
    Good for the hand-written configs users have; exotic layouts degrade to the parent's
    line or None, never to a wrong key.
    """
    target = tuple(path)
    best_len, best_line = 0, None
    table: tuple[str | int, ...] = ()
    counters: dict[tuple[str, ...], int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = tuple(_split_key(header.group(2)))
            if header.group(1) == "[[":
                counters[names] = counters.get(names, -1) + 1
                table = (*names, counters[names])
            else:
                table = names
            here = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            here = (*table, *_split_key(key.group(1)))
        n = len(here)
        if n > best_len and n <= len(target) and target[:n] == here:
            best_len, best_line = n, lineno
            if n == len(target):
                break
    return best_line
