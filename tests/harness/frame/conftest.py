"""Shared helpers for the harness's self-tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from harness.hosts.netns import NetnsHost

SUBPROCESS_TIMEOUT = 120.0
"""Seconds a nested pytest run may take (each builds a few namespaces)."""


@pytest.fixture
def host(require_root: None, artifacts, request: pytest.FixtureRequest) -> Iterator[NetnsHost]:
    """A lone namespace (no links) under this process's owner prefix."""
    from harness.state import state

    scope = state(request.config).namer.scope()
    h = NetnsHost(scope.netns("solo"), log_dir=artifacts.dir / "solo", label="solo")
    artifacts.add_log_dir(h.log_dir)
    yield h
    h.close()


@pytest.fixture
def nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment for a nested pytest: not an xdist worker, no startup cleanup (a
    concurrent self-test may be inspecting deliberate leftovers)."""
    for var in (
        "PYTEST_XDIST_WORKER",
        "PYTEST_XDIST_WORKER_COUNT",
        "PYTEST_XDIST_TESTRUNUID",
        "PYTEST_ADDOPTS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ZTUN_HARNESS_STARTUP_CLEANUP", "0")


@pytest.fixture
def nested(pytester: pytest.Pytester, nested_env: None) -> Callable[..., pytest.RunResult]:
    """``nested(*args)``: a pytest subprocess in the pytester folder, artifacts inside it."""

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "--artifacts",
            str(pytester.path / "artifacts"),
            *args,
            timeout=SUBPROCESS_TIMEOUT,
        )

    return run


def namespaces_with(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        return []


@pytest.fixture
def list_namespaces() -> Callable[[str], list[str]]:
    """``list_namespaces(prefix)``: names in /run/netns starting with ``prefix``."""
    return namespaces_with
