"""docs/platforms.md says what each Platform does: its state directory and journal names
are the code's (and contracts.md's), so a change to one fails here until the page is
changed too."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztun.platform import for_os

#: Paths are compared as Linux spells them (and journal names need /proc): one OS's run
#: is enough to hold the page to the code.
pytestmark = pytest.mark.linux

ROOT = Path(__file__).resolve().parents[3]


def row(title: str) -> list[str]:
    """The cells of the docs/platforms.md table row whose first cell is `title`."""
    for line in (ROOT / "docs/platforms.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(title):
            return cells[1:]
    raise AssertionError(f"no row {title!r} in docs/platforms.md")


@pytest.mark.parametrize(("cell_index", "os_name"), [(0, "linux"), (1, "darwin")])
def test_the_state_directory_is_the_platforms(cell_index: int, os_name: str) -> None:
    platform = for_os(os_name)
    cell = row("state directory")[cell_index]
    assert cell.startswith(f"`{platform.state_dir}`"), cell
    contracts = (ROOT / "docs/contracts.md").read_text()
    assert f"`{platform.state_dir}`" in contracts


def test_windows_state_directory_and_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGRAMDATA", "C:\\ProgramData")
    platform = for_os("win32")
    assert str(platform.state_dir).replace("/", "\\") == "C:\\ProgramData\\ztun"
    cell = row("state directory")[2]
    assert cell.startswith("`%ProgramData%\\ztun`") and "`\\\\.\\pipe\\ztun-<device>`" in cell


def test_linux_journal_names_are_per_namespace() -> None:
    platform = for_os("linux")
    name = platform.journal_path("zt0").name
    assert name.startswith("zt0_") and name.endswith(".journal")  # <device>_<netns inode>
    assert "`<device>_<netns inode>.journal`" in row("state directory")[0]
