"""The shipped suite's mtu behaviours (harness.suite.test_mtu)."""

from harness.suite.test_mtu import *  # noqa: F403
