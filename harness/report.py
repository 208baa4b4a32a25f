"""The conformance report: one document (``report.json``, schema 2) and its three views.

Shape (extra keys are allowed; readers use these)::

    {"schema": 2,
     "behaviours": [{"id": "tcp_open", "description": "...", "optional": false}, ...],
     "implementations": {
         "ztun": {"version": "ztun 0.1.0", "run": "...", "seed": 1, "topology": "netns",
                  "results": {"tcp_open": {"outcome": "pass|fail|error|skip",
                                           "reason": "...", "artifacts": ["a/b.pcap"]}}}}}

``artifacts`` are paths relative to the folder that holds the ``report.json``, so a report
folder with its artifacts can be moved or archived whole.

Views: :func:`render_text` (the terminal table), :func:`render_markdown` (``report.md``)
and :func:`render_html` (``report.html``: one self-contained file, no script and nothing
fetched from a network: the table, every reason, links to pcaps and logs, and each
behaviour's sentence saying what it checks and why a failure is a defect).
:func:`merge` puts several runs side by side (``ztun-harness report --merge DIR...``).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA = 2
JSON_NAME, MARKDOWN_NAME, HTML_NAME = "report.json", "report.md", "report.html"
PASS, FAIL, ERROR, SKIP = "pass", "fail", "error", "skip"
OUTCOMES = (PASS, FAIL, ERROR, SKIP)
REASON_CHARS = 160
"""A reason longer than this is cut in the text table's notes (the documents keep it all)."""

_CELL = {PASS: "pass", FAIL: "FAIL", ERROR: "ERROR", SKIP: "skip"}

Document = dict[str, Any]


class ReportError(ValueError):
    """A report file is missing, unreadable or of another schema."""


def empty() -> Document:
    return {"schema": SCHEMA, "behaviours": [], "implementations": {}}


def first_line(text: str, limit: int) -> str:
    """The message on one line (its lines joined by " | "), cut to ``limit``."""
    line = " | ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- files


def load(location: str | Path) -> tuple[Document, Path]:
    """A report from a folder (its report.json) or a file; artifacts made absolute."""
    path = Path(location)
    if path.is_dir():
        path = path / JSON_NAME
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else None
        raise ReportError(f"{path}: schema {found!r}, expected {SCHEMA}")
    base = path.parent.resolve()
    for column in document.get("implementations", {}).values():
        for result in column.get("results", {}).values():
            result["artifacts"] = [str(base / a) for a in result.get("artifacts") or []]
    return document, base


def _relative(paths: Iterable[str], folder: Path) -> list[str]:
    out = []
    for item in paths:
        try:
            out.append(os.path.relpath(Path(item).resolve(), folder))
        except ValueError:  # another drive (Windows): only an absolute path reaches it
            out.append(str(Path(item).resolve()))
    return out


def write(document: Document, folder: Path) -> list[Path]:
    """Write report.json, report.md and report.html into ``folder``; returns their paths.

    ``document``'s artifact paths are absolute; the files get them relative to ``folder``.
    Each file is written to a temporary name first: a reader never sees half a file.
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    local = json.loads(json.dumps(document))
    for column in local["implementations"].values():
        for result in column.get("results", {}).values():
            result["artifacts"] = _relative(result.get("artifacts") or [], folder)
    written = []
    for name, text in (
        (JSON_NAME, json.dumps(local, indent=2) + "\n"),
        (MARKDOWN_NAME, render_markdown(local)),
        (HTML_NAME, render_html(local)),
    ):
        target = folder / name
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(target)
        written.append(target)
    return written


def merge(documents: Sequence[Document]) -> Document:
    """Columns side by side, in the order given; behaviours in first-seen order.

    Two columns with the same name (two runs of one implementation) are a mistake the
    reader could not see in the table: ReportError names them.
    """
    merged = empty()
    seen: dict[str, dict[str, Any]] = {}
    for document in documents:
        for behaviour in document.get("behaviours", []):
            if behaviour["id"] not in seen:
                seen[behaviour["id"]] = dict(behaviour)
                merged["behaviours"].append(seen[behaviour["id"]])
            elif not seen[behaviour["id"]].get("description"):
                seen[behaviour["id"]]["description"] = behaviour.get("description", "")
        for name, column in document.get("implementations", {}).items():
            if name in merged["implementations"]:
                raise ReportError(
                    f"implementation {name!r} appears in two reports: rerun one with "
                    "--tun2socks-name to tell them apart"
                )
            merged["implementations"][name] = column
    return merged


# --------------------------------------------------------------------------- views


def _rows(document: Document) -> list[dict[str, Any]]:
    """Behaviours that have a result in at least one column."""
    columns = document["implementations"].values()
    return [
        b for b in document["behaviours"] if any(b["id"] in c.get("results", {}) for c in columns)
    ]


def _label(behaviour: dict[str, Any]) -> str:
    return str(behaviour["id"]) + (" (optional)" if behaviour.get("optional") else "")


def totals(document: Document, name: str) -> dict[str, dict[str, int]]:
    """``{"required": {outcome: n}, "optional": {...}}`` for one implementation."""
    optional = {b["id"] for b in document["behaviours"] if b.get("optional")}
    counts: dict[str, dict[str, int]] = {"required": {}, "optional": {}}
    for behaviour, result in document["implementations"][name].get("results", {}).items():
        kind = "optional" if behaviour in optional else "required"
        counts[kind][result["outcome"]] = counts[kind].get(result["outcome"], 0) + 1
    return counts


def verdict(document: Document, name: str) -> bool:
    """True when no required behaviour failed or errored (skips and optional ones never
    change it)."""
    required = totals(document, name)["required"]
    return not required.get(FAIL) and not required.get(ERROR)


def only_skips(document: Document, name: str) -> bool:
    """Every behaviour with a result was skipped (an implementation that cannot be found
    or started skips them all): the column certifies nothing either way."""
    counts = totals(document, name)
    outcomes = {o for kind in counts.values() for o in kind}
    return outcomes == {SKIP}


def _state(document: Document, name: str) -> str:
    if only_skips(document, name):
        return "NOTHING CERTIFIED (every behaviour skipped)"
    return "CONFORMS" if verdict(document, name) else "DOES NOT CONFORM"


def _summary_line(document: Document, name: str) -> str:
    column = document["implementations"][name]
    counts = totals(document, name)
    parts = []
    for kind in ("required", "optional"):
        found = ", ".join(f"{counts[kind][o]} {o}" for o in OUTCOMES if counts[kind].get(o))
        if found:
            parts.append(f"{kind}: {found}")
    version = column.get("version") or "version unknown"
    where = f"{column.get('topology', '?')} topology, run {column.get('run', '?')}"
    state = _state(document, name)
    return f"{name} ({version}; {where}): {state} -- {'; '.join(parts) or 'nothing ran'}"


def _notes(document: Document) -> tuple[dict[tuple[str, str], int], list[tuple[int, str, str]]]:
    """Numbered notes for every cell that is not a pass: (behaviour, impl) -> number."""
    numbers: dict[tuple[str, str], int] = {}
    notes: list[tuple[int, str, str]] = []
    for behaviour in _rows(document):
        for name, column in document["implementations"].items():
            result = column.get("results", {}).get(behaviour["id"])
            if result is not None and result["outcome"] != PASS:
                numbers[(behaviour["id"], name)] = len(notes) + 1
                notes.append((len(notes) + 1, behaviour["id"], name))
    return numbers, notes


def render_text(document: Document) -> list[str]:
    """The table as text lines: one row per behaviour, one column per implementation,
    then each implementation's verdict and the reasons of every cell that is not a pass."""
    names = list(document["implementations"])
    numbers, notes = _notes(document)
    rows: list[list[str]] = []
    for behaviour in _rows(document):
        row = [_label(behaviour)]
        for name in names:
            result = document["implementations"][name].get("results", {}).get(behaviour["id"])
            if result is None:
                row.append("-")
                continue
            cell = _CELL.get(result["outcome"], result["outcome"])
            number = numbers.get((behaviour["id"], name))
            row.append(f"{cell} [{number}]" if number else cell)
        rows.append(row)
    header = ["behaviour", *names]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows), ""]
    lines += [_summary_line(document, name) for name in names]
    if notes:
        lines.append("")
    for number, behaviour_id, name in notes:
        result = document["implementations"][name]["results"][behaviour_id]
        reason = first_line(result.get("reason", ""), REASON_CHARS)
        lines.append(f"[{number}] {name} / {behaviour_id}: {reason}")
        if result.get("artifacts"):
            lines.append(f"    artifacts: {os.path.commonpath(result['artifacts'])}")
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(document: Document) -> str:
    names = list(document["implementations"])
    numbers, notes = _notes(document)
    out = ["# tun2socks conformance", ""]
    out += [f"- {_md(_summary_line(document, name))}" for name in names]
    out += ["", "| behaviour | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for behaviour in _rows(document):
        cells = []
        for name in names:
            result = document["implementations"][name].get("results", {}).get(behaviour["id"])
            if result is None:
                cells.append("-")
                continue
            number = numbers.get((behaviour["id"], name))
            cell = _CELL[result["outcome"]]
            cells.append(f"{cell} [{number}](#note-{number})" if number else cell)
        out.append(f"| {_md(_label(behaviour))} | " + " | ".join(cells) + " |")
    if notes:
        out += ["", "## Reasons", ""]
    for number, behaviour_id, name in notes:
        result = document["implementations"][name]["results"][behaviour_id]
        out.append(f'<a id="note-{number}"></a>[{number}] **{name} / {behaviour_id}**: ')
        out.append(f"{_md(result.get('reason', ''))}")
        for artifact in result.get("artifacts") or []:
            out.append(f"  - [{artifact}]({artifact})")
        out.append("")
    out += ["", "## What each behaviour checks", ""]
    for behaviour in _rows(document):
        out.append(f"- **{_md(_label(behaviour))}**: {_md(behaviour.get('description', ''))}")
    return "\n".join(out) + "\n"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f3f3f3}
td.pass{background:#dff5df}td.fail{background:#f8d4d4;font-weight:bold}
td.error{background:#f5c6a5;font-weight:bold}td.skip{background:#eee;color:#555}
td.none{color:#999}.desc{font-size:.85em;color:#555;max-width:48em}
.optional{font-size:.8em;color:#555;font-style:italic}
.ok{color:#176317}.bad{color:#a11}li{margin:.3em 0}code{font-size:.9em}
"""


def render_html(document: Document) -> str:
    """One self-contained page: inline style, no script, no external resource."""
    esc = html.escape
    names = list(document["implementations"])
    numbers, notes = _notes(document)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>tun2socks conformance</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>tun2socks conformance</h1>",
        "<ul>",
    ]
    for name in names:
        good = verdict(document, name) and not only_skips(document, name)
        out.append(
            f'<li class="{"ok" if good else "bad"}">{esc(_summary_line(document, name))}</li>'
        )
    out += ["</ul>", "<table>", "<tr><th>behaviour</th>"]
    out += [f"<th>{esc(name)}</th>" for name in names]
    out.append("</tr>")
    for behaviour in _rows(document):
        optional = '<div class="optional">optional</div>' if behaviour.get("optional") else ""
        out.append(
            f"<tr><td><code>{esc(behaviour['id'])}</code>{optional}"
            f'<div class="desc">{esc(behaviour.get("description", ""))}</div></td>'
        )
        for name in names:
            result = document["implementations"][name].get("results", {}).get(behaviour["id"])
            if result is None:
                out.append('<td class="none">-</td>')
                continue
            outcome = result["outcome"]
            number = numbers.get((behaviour["id"], name))
            note = f' <a href="#note-{number}">[{number}]</a>' if number else ""
            title = f' title="{esc(first_line(result.get("reason", ""), 500))}"' if number else ""
            out.append(f'<td class="{esc(outcome)}"{title}>{_CELL[outcome]}{note}</td>')
        out.append("</tr>")
    out.append("</table>")
    if notes:
        out += ["<h2>Reasons</h2>", "<ol>"]
    for number, behaviour_id, name in notes:
        result = document["implementations"][name]["results"][behaviour_id]
        links = "".join(
            f'<li><a href="{esc(a)}">{esc(a)}</a></li>' for a in result.get("artifacts") or []
        )
        out.append(
            f'<li id="note-{number}" value="{number}"><b>{esc(name)} / '
            f"<code>{esc(behaviour_id)}</code></b> ({esc(result['outcome'])}): "
            f"<pre>{esc(result.get('reason', ''))}</pre>"
            + (f"<ul>{links}</ul>" if links else "")
            + "</li>"
        )
    if notes:
        out.append("</ol>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
