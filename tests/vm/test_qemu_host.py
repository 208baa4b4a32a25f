"""The Host protocol on a QEMU guest restored from the saved state."""

from __future__ import annotations

import signal
import time

import pytest

from harness.hosts import CommandTimeout, LogLine, ProcessNotReady, TcpListening
from harness.hosts.qemu import GUEST_SHARE, QemuHost
from ztun.tools import guest_tool

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.linux]

#: Restore-to-SSH is ~2-4 s under TCG here; the budget leaves room for a loaded runner.
RESTORE_BUDGET = 30.0
#: The guest clock is set from the host's right after the restore.
CLOCK_SLACK = 10.0
MARKER = "/root/ztun-fresh-guest-marker"


def test_guest_is_restored_fast_with_clock_and_share(qemu_host: QemuHost) -> None:
    assert qemu_host.timings["restore_to_ssh"] < RESTORE_BUDGET, qemu_host.timings
    guest_now = float(qemu_host.run([guest_tool("date"), "+%s.%N"], check=True).stdout)
    assert abs(guest_now - time.time()) < CLOCK_SLACK
    mounts = qemu_host.read_file("/proc/mounts").decode()
    share = next(line for line in mounts.splitlines() if f" {GUEST_SHARE} " in line)
    assert " 9p " in share and " ro," in share, share
    assert qemu_host.run([guest_tool("test"), "-f", f"{GUEST_SHARE}/pyproject.toml"]).ok
    denied = qemu_host.run([guest_tool("touch"), f"{GUEST_SHARE}/should-not-exist"])
    assert not denied.ok and "Read-only" in denied.stderr


@pytest.mark.parametrize("order", ["first", "second"])
def test_every_test_gets_a_fresh_guest(qemu_host: QemuHost, order: str) -> None:
    """Whichever runs second must not see what the first wrote: overlays are per test."""
    assert not qemu_host.run([guest_tool("test"), "-e", MARKER]).ok
    qemu_host.write_file(MARKER, order)
    assert qemu_host.read_file(MARKER) == order.encode()


def test_run_env_input_and_timeout(qemu_host: QemuHost) -> None:
    done = qemu_host.run(
        [guest_tool("sh"), "-c", f'echo "$GREETING"; {guest_tool("cat")}; exit 3'],
        env={"GREETING": "hello guest"},
        input="from stdin",
    )
    assert (done.returncode, done.stdout) == (3, "hello guest\nfrom stdin")
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        qemu_host.run([guest_tool("sleep"), "30"], timeout=1.0)
    assert time.monotonic() - started < 10.0
    # The guest really killed it: no sleep left behind.
    assert not qemu_host.run([guest_tool("pgrep"), "-x", "sleep"]).ok


def test_spawn_awaits_readiness_and_stops(qemu_host: QemuHost) -> None:
    server = qemu_host.spawn(
        [guest_tool("python3"), "-u", "-m", "http.server", "--bind", "127.0.0.1", "8080"],
        name="http",
        ready=TcpListening(8080),
        timeout=60.0,
    )
    assert server.alive()
    fetched = qemu_host.run(
        [
            guest_tool("curl"),
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:8080/",
        ],
        check=True,
    )
    assert fetched.stdout == "200"
    talker = qemu_host.spawn(
        [
            guest_tool("sh"),
            "-c",
            f"echo warming up; {guest_tool('sleep')} 0.5; "
            f"echo ztun ready; {guest_tool('sleep')} 60",
        ],
        name="talker",
        ready=LogLine(r"ztun ready"),
    )
    assert talker.stop() == -signal.SIGTERM
    assert server.stop() == -signal.SIGTERM
    assert "GET / HTTP" in server.log_path.read_text()
    with pytest.raises(ProcessNotReady, match="exited"):
        qemu_host.spawn(
            [guest_tool("sh"), "-c", "echo broken; exit 7"],
            name="broken",
            ready=TcpListening(9),
            timeout=30.0,
        )


def test_interfaces_and_addresses(qemu_host: QemuHost) -> None:
    assert {"lo", "eth0"} <= set(qemu_host.interfaces())
    # QEMU user-mode networking hands out 10.0.2.15 (restrict=on: no route out).
    assert "10.0.2.15/24" in {str(a) for a in qemu_host.addresses("eth0")}
