"""A process that owns a Vagrant sandbox namespace, killed with SIGKILL, then cleanup.

Shared by tests/harness/frame/test_vagrant_sandbox_cleanup.py (a stand-in daemon, default
profile) and tests/vm/test_vagrant.py (the real libvirtd, the opt-in Vagrant row).
"""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

from harness.owners import NAME_PREFIX, OWNER_DIR

#: Seconds the owner may take to bring its namespace up (libvirtd: a few under load).
OWNER_READY_TIMEOUT = 60.0
CLEANUP_TIMEOUT = 60.0

#: The owner: ``sys.argv[1]`` is its work folder; it prints "<namespace> <daemon pid>"
#: once the namespace and its daemon run, then waits to be killed.
STAND_IN_OWNER = """
import subprocess, sys
from pathlib import Path
from harness.hosts.netns import NetnsHost
from harness.hosts.vagrant import sandbox_owner_prefix
from ztun.tools import tool

workdir = Path(sys.argv[1])
host = NetnsHost(sandbox_owner_prefix() + "0", log_dir=workdir / "logs", forwarding=True)
# libvirtd's place: in the namespace and in a private mount namespace of its own.
argv = [tool("unshare"), "--mount", "--propagation", "private", tool("sleep"), "600"]
daemon = subprocess.Popen(host.exec_argv(argv), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(host.name, daemon.pid, flush=True)
sys.stdin.read()
"""

LIBVIRT_OWNER = """
import sys
from pathlib import Path
from harness.hosts.vagrant import LibvirtSandbox

sandbox = LibvirtSandbox(Path(sys.argv[1]))
print(sandbox.name, sandbox.process.pid, flush=True)
sys.stdin.read()
"""


def _dead(pid: int) -> bool:
    """Gone, or a zombie whose new parent (init) has not reaped it yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _cleanup(prefix: str) -> subprocess.CompletedProcess[str]:
    # --prefix keeps the run to this owner's names (other runs on the machine are not
    # ours to touch); which names cleanup may remove is the owner regex's call either way.
    return subprocess.run(
        [sys.executable, "-m", "harness", "cleanup", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=CLEANUP_TIMEOUT,
        check=False,
    )


def _first_line(child: subprocess.Popen[str], timeout: float) -> str:
    """The owner's announcement, or "" if it exits or stays silent for ``timeout``."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    return child.stdout.readline() if ready else ""


def _exit_output(child: subprocess.Popen[str]) -> str:
    """The stderr of an owner that exited (killed first if it still runs)."""
    child.kill()
    child.wait(timeout=CLEANUP_TIMEOUT)
    assert child.stderr is not None
    ready, _, _ = select.select([child.stderr], [], [], 0)
    return child.stderr.read()[-3000:] if ready else "(no output)"


def kill_owner_then_cleanup(owner_script: str, workdir: Path) -> None:
    """Start ``owner_script``; cleanup keeps its namespace while it lives; SIGKILL it (no
    finalizer runs); cleanup then removes the namespace and kills its daemon."""
    child = subprocess.Popen(
        [sys.executable, "-c", owner_script, str(workdir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    prefix = f"{NAME_PREFIX}vagrant{child.pid}-"
    try:
        line = _first_line(child, OWNER_READY_TIMEOUT)
        assert line, f"the owner's sandbox never ran: {_exit_output(child)}"
        name, daemon = line.split()
        assert name == f"{prefix}0"
        assert Path(f"/run/netns/{name}").exists()
        live = _cleanup(prefix)
        assert live.returncode == 0, live.stderr
        assert f"kept {name}" in live.stdout, live.stdout
        assert Path(f"/run/netns/{name}").exists()

        child.kill()
        child.wait(timeout=CLEANUP_TIMEOUT)
        assert Path(f"/run/netns/{name}").exists(), "SIGKILL skips every finalizer"
        assert not _dead(int(daemon)), "the daemon outlives its owner until cleanup"
        dead = _cleanup(prefix)
        assert dead.returncode == 0, dead.stderr
        assert f"removed namespace {name} (killed pids [" in dead.stdout, dead.stdout
        assert daemon in dead.stdout.split("killed pids", 1)[1], dead.stdout
        assert not Path(f"/run/netns/{name}").exists()
        assert _dead(int(daemon))
        assert not (OWNER_DIR / f"{prefix}owner").exists(), "the dead owner's record stays"
    finally:
        # Whatever failed above: the owner dies and its namespace goes.
        child.kill()
        child.wait(timeout=CLEANUP_TIMEOUT)
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
        _cleanup(prefix)
