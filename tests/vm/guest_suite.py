"""``ztun-harness certify`` inside a guest (QEMU or Vagrant), over the read-only checkout."""

from __future__ import annotations

import json
import os

from harness.artifacts import TestArtifacts
from harness.hosts.base import CmdResult
from harness.hosts.qemu import GUEST_VENV
from harness.hosts.ssh import SshHost
from ztun.tools import guest_tool

GUEST_ARTIFACTS = "/tmp/artifacts"
TIME_SCALE = os.environ.get("ZTUN_VM_TIME_SCALE", "10")
"""Time bounds in a TCG guest: every packet goes through the emulator (~10x the cost of
KVM here), so each behaviour's bound and timeout is multiplied by this (--time-scale)."""


def certify_in_guest(
    guest: SshHost,
    artifacts: TestArtifacts,
    *,
    topology: str,
    timeout: float,
    marks: str | None = None,
    keyword: str | None = None,
) -> CmdResult:
    """Run the shipped suite against ztun inside ``guest``; evidence comes back.

    The guest's output, its report folder (report, pcaps, logs: a tarball) and its
    ``report.json`` are attached to ``artifacts``; a report, when there is one, must name
    an implementation.  The caller asserts on the returned exit status.
    """
    report = f"{GUEST_ARTIFACTS}/{topology}"
    argv = [f"{GUEST_VENV}/bin/python3", "-m", "harness", "certify", "--tun2socks", "ztun"]
    argv += ["--topology", topology]
    argv += [*(["-m", marks] if marks else []), *(["-k", keyword] if keyword else [])]
    argv += ["--time-scale", TIME_SCALE, "--report", report, "--keep-pcaps"]
    result = guest.run(argv, env={"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root"}, timeout=timeout)
    artifacts.attach_file(
        "guest-certify.txt", result.stdout + result.stderr, "certify output inside the guest"
    )
    # Everything the guest's run produced (pcaps, logs, the report) lands with this test.
    packed = guest.run(
        [guest_tool("tar"), "-C", report, "-czf", "/tmp/guest-report.tgz", "."], timeout=120.0
    )
    if packed.ok:
        guest.get("/tmp/guest-report.tgz", artifacts.path("guest-report.tgz"))
    table = guest.run([guest_tool("cat"), f"{report}/report.json"])
    if table.ok:
        artifacts.attach_file("report.json", table.stdout, "conformance report (guest)")
        assert json.loads(table.stdout)["implementations"], "empty conformance report"
    return result


def failure_tail(result: CmdResult, lines: int = 40) -> str:
    """The end of a guest run's output, for an assertion message."""
    tail = "\n".join(result.stdout.splitlines()[-lines:])
    return f"{tail}\n{result.stderr[-2000:]}"
