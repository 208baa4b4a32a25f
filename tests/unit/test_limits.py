"""ztun.limits: the soft open-files limit raised to the hard one, the UDP flow bound."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from ztun.limits import raise_open_files_limit, udp_flow_limit


@pytest.fixture
def lowered() -> Iterator[tuple[int, int]]:
    """This process's soft RLIMIT_NOFILE lowered (a process may always lower it and
    raise it back up to the hard limit, which stays as it is); restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    yield low, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_the_hard_one(
    lowered: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    low, hard = lowered
    if hard == resource.RLIM_INFINITY or hard <= low:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    with caplog.at_level(logging.INFO, logger="ztun"):
        assert raise_open_files_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert f"open files limit raised from {low} to {hard}" in caplog.text


@pytest.mark.parametrize(
    ("open_files", "flows"),
    [(None, 0), (64, 16), (200, 34), (1024, 240), (524288, 131056)],
)
def test_udp_flows_get_a_quarter_of_what_is_left(open_files: int | None, flows: int) -> None:
    """Half of the descriptors above the 64 reserved, at 2 per flow; at least 16."""
    assert udp_flow_limit(open_files) == flows
