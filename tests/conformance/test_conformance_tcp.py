"""The shipped suite's tcp behaviours (harness.suite.test_tcp)."""

from harness.suite.test_tcp import *  # noqa: F403
