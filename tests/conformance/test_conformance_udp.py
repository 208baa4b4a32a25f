"""The shipped suite's udp behaviours (harness.suite.test_udp)."""

from harness.suite.test_udp import *  # noqa: F403
