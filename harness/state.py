"""The harness's per-session state, kept in the pytest config's stash.

The plugin (:mod:`harness.plugin`) makes it at ``pytest_configure`` -- the run's seed,
folder and implementation, the topology -- and everything that reads it during the run
(the conformance table, :mod:`harness.conformance`; the suite's and the frame tests'
fixtures) asks :func:`state` here, so none of them imports the plugin that registered it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.hygiene import Leaks, RootSnapshot
from harness.impls import AdapterChoice
from harness.topo import Namer

__all__ = ["HarnessState", "set_state", "state"]

_STATE_KEY = pytest.StashKey["HarnessState"]()


@dataclass
class HarnessState:
    """Per-process (per-worker) state of the plugin."""

    seed: int
    run_id: str
    run_dir: Path
    namer: Namer
    worker_id: str | None
    xdist_controller: bool
    keep: bool
    impl: str
    adapter: AdapterChoice
    topology: str = "netns"
    single_host: str = "auto"
    report_dir: Path | None = None
    baseline: RootSnapshot | None = None
    leaks: Leaks = field(default_factory=Leaks)
    leaks_text: str = ""
    stale_removed: str = ""


def state(config: pytest.Config) -> HarnessState:
    return config.stash[_STATE_KEY]


def set_state(config: pytest.Config, st: HarnessState) -> None:
    config.stash[_STATE_KEY] = st
