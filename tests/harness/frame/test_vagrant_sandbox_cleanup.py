"""A Vagrant box's libvirt sandbox namespace outlives a killed owner only until cleanup.

The sandbox (harness.hosts.vagrant.LibvirtSandbox) names its network namespace under the
owner prefix ``ztvagrant<pid>-``: ``python -m harness cleanup`` keeps it while its owner
lives and, once the owner died by SIGKILL (no ``finally``, no finalizer), removes it and
kills what still runs in it.  Here libvirtd's place is taken by ``sleep`` in a private
mount namespace, as libvirtd runs: libvirtd comes with the opt-in Vagrant row, where
tests/vm/test_vagrant.py kills the owner of a real sandbox the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.frame.sandbox_owner import STAND_IN_OWNER, kill_owner_then_cleanup

pytestmark = [pytest.mark.netns]


def test_a_killed_owners_sandbox_namespace_is_removed_by_cleanup(
    require_root: None, tmp_path: Path
) -> None:
    kill_owner_then_cleanup(STAND_IN_OWNER, tmp_path)
