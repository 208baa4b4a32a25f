"""VM tests: QEMU guests restored from a saved state, Vagrant boxes, testinfra on both.

Selected with ``-m vm`` (``pytest tests/vm -m vm -n 0``): they run serially, because a TCG
guest already uses both cores.  The fixtures come from :mod:`harness.vmfixtures`
(imported here as well, so the folder works before the plugin registers them).
"""

from harness.vmfixtures import (  # noqa: F401  (fixtures are used by name)
    qemu_host,
    testinfra_for,
    vagrant_linux,
    vm_image,
    vm_state,
    vm_testinfra,
)
