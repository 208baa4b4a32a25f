"""The shipped suite's icmp behaviours (harness.suite.test_icmp)."""

from harness.suite.test_icmp import *  # noqa: F403
