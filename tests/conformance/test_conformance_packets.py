"""The shipped suite's packets behaviours (harness.suite.test_packets)."""

from harness.suite.test_packets import *  # noqa: F403
