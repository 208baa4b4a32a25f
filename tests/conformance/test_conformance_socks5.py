"""The shipped suite's socks5 behaviours (harness.suite.test_socks5)."""

from harness.suite.test_socks5 import *  # noqa: F403
