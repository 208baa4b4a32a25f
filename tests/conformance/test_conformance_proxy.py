"""The shipped suite's proxy behaviours (harness.suite.test_proxy)."""

from harness.suite.test_proxy import *  # noqa: F403
