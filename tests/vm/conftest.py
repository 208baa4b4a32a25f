"""VM tests: QEMU guests restored from a saved state, Vagrant boxes, testinfra on both.

Selected with ``-m vm`` (``pytest tests/vm -m vm -n 0``): they run serially, because a TCG
guest already uses both cores.  The fixtures come from :mod:`harness.vmfixtures`
(imported here as well, so the folder works before the plugin registers them).
"""

import pytest

from harness.vmfixtures import (  # noqa: F401  (fixtures are used by name)
    qemu_host,
    testinfra_for,
    vagrant_linux,
    vm_image,
    vm_state,
    vm_testinfra,
)

#: A VM test's fixtures may build the image and the saved state on a cold cache (minutes
#: under TCG), and the in-guest conformance run is long: the suite-wide 300 s is too short.
VM_TEST_TIMEOUT = 3600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vm/" in item.nodeid and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(VM_TEST_TIMEOUT))
