"""NetnsHost: commands, background processes, readiness, files, sockets, teardown."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from harness.hosts.base import (
    CommandFailed,
    CommandTimeout,
    Host,
    LogLine,
    PathExists,
    Process,
    ProcessNotReady,
    TcpListening,
    UdpListening,
)
from harness.hosts.netns import NetnsHost, netns_pids
from ztun.tools import tool

pytestmark = pytest.mark.netns

PY = tool("python3")
SERVE_TCP = (
    "import signal,socket,sys;"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET);"
    "s.bind((sys.argv[1],int(sys.argv[2])));s.listen();signal.pause()"
)
SERVE_UDP = (
    "import signal,socket,sys;"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,"
    "socket.SOCK_DGRAM);s.bind((sys.argv[1],int(sys.argv[2])));signal.pause()"
)


def test_netns_host_satisfies_the_protocol(host: NetnsHost) -> None:
    assert isinstance(host, Host)


def test_run_returns_status_and_both_streams(host: NetnsHost) -> None:
    result = host.run([tool("sh"), "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.argv == (tool("sh"), "-c", "echo out; echo err >&2; exit 3")
    with pytest.raises(CommandFailed, match="exited 3"):
        host.run([tool("sh"), "-c", "exit 3"], check=True)


def test_run_passes_env_and_input(host: NetnsHost) -> None:
    result = host.run(
        [tool("sh"), "-c", 'read x; echo "$x-$ZT_VAR"'], env={"ZT_VAR": "v"}, input="in"
    )
    assert result.stdout == "in-v\n"


def test_run_is_inside_the_namespace(host: NetnsHost) -> None:
    assert host.run([tool("ip"), "-o", "link"]).stdout.count("\n") == 1  # only lo
    inode = os.stat(f"/run/netns/{host.name}").st_ino
    probe = host.run([tool("stat"), "-L", "-c", "%i", "/proc/self/ns/net"], check=True)
    assert int(probe.stdout) == inode


def test_run_returns_when_the_command_exits_even_if_a_daemon_holds_its_pipes(
    host: NetnsHost,
) -> None:
    start = time.monotonic()
    result = host.run(
        [tool("sh"), "-c", f"echo hi; {tool('setsid')} -f {tool('sleep')} 300"], timeout=10
    )
    assert time.monotonic() - start < 5
    assert result.ok and result.stdout == "hi\n"
    assert netns_pids(host.name), "the daemon is left running (close() kills it)"


def test_run_timeout_kills_and_keeps_partial_output(host: NetnsHost) -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        host.run([tool("sh"), "-c", f"echo started; exec {tool('sleep')} 30"], timeout=0.5)
    assert time.monotonic() - start < 5
    assert info.value.stdout == "started\n"
    assert netns_pids(host.name) == []


def test_spawn_awaits_a_log_line_and_logs_under_log_dir(host: NetnsHost) -> None:
    proc = host.spawn(
        [tool("sh"), "-c", f"echo booting; echo 'server ready port=1'; exec {tool('sleep')} 30"],
        name="srv",
        ready=LogLine(r"ready port=\d"),
    )
    assert isinstance(proc, Process)
    assert proc.alive() and proc.log_path == host.log_dir / "srv.log"
    assert "server ready" in proc.log_path.read_text()
    second = host.spawn([tool("true")], name="srv")
    assert second.log_path == host.log_dir / "srv-1.log"
    assert proc.stop() == -signal.SIGTERM


def test_wait_for_a_later_line(host: NetnsHost) -> None:
    proc = host.spawn([tool("sh"), "-c", f"echo one; {tool('sleep')} 30; echo two"], name="p")
    proc.wait_for(LogLine("one"), timeout=5)
    with pytest.raises(ProcessNotReady, match="no log line matching 'two' within"):
        proc.wait_for(LogLine("two"), timeout=0.2)


def test_spawn_raises_with_log_tail_when_process_exits(host: NetnsHost) -> None:
    with pytest.raises(ProcessNotReady) as info:
        host.spawn(
            [tool("sh"), "-c", "echo 'bind: address in use' >&2; exit 7"],
            name="bad",
            ready=LogLine("ready"),
        )
    assert info.value.returncode == 7
    assert "address in use" in info.value.log_tail
    assert "exited with status 7" in str(info.value)


def test_spawn_deadline_stops_the_process(host: NetnsHost) -> None:
    start = time.monotonic()
    with pytest.raises(ProcessNotReady, match=r"within 0\.3s"):
        host.spawn([tool("sleep"), "30"], name="slow", ready=TcpListening(9), timeout=0.3)
    assert time.monotonic() - start < 5
    assert netns_pids(host.name) == []


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_tcp_and_udp_readiness(host: NetnsHost, address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    tcp = host.spawn(
        [PY, "-c", SERVE_TCP, address, "7001"], name="tcp", ready=TcpListening(7001, family)
    )
    udp = host.spawn([PY, "-c", SERVE_UDP, address, "7002"], name="udp", ready=UdpListening(7002))
    assert 7001 in host.listening_ports("tcp", family)
    assert 7002 in host.listening_ports("udp")
    # The root namespace does not see them: the check really looks inside.
    host.wait_ready(TcpListening(7001), timeout=1)
    tcp.stop()
    udp.stop()


def test_path_readiness(host: NetnsHost, tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    host.spawn(
        [
            tool("sh"),
            "-c",
            f"{tool('sleep')} 0.1; {tool('touch')} {marker}; exec {tool('sleep')} 30",
        ],
        name="p",
        ready=PathExists(marker),
    )
    assert marker.exists()


def test_stop_escalates_to_sigkill_and_kills_the_group(host: NetnsHost) -> None:
    proc = host.spawn(
        [tool("sh"), "-c", f"trap '' TERM; {tool('sleep')} 300 & echo child $!; wait"],
        name="stubborn",
        ready=LogLine("child"),
    )
    child = int(proc.log_text().split()[-1])
    start = time.monotonic()
    assert proc.stop(timeout=0.3) == -signal.SIGKILL
    assert time.monotonic() - start < 3
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()
    assert proc.stop() == -signal.SIGKILL  # idempotent


def test_files(host: NetnsHost, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    host.write_file(target, "hello")
    assert host.read_file(target) == b"hello"
    host.write_file(target, b"\x00\xff")
    assert host.run([tool("od"), "-An", "-tx1", str(target)]).stdout.split() == ["00", "ff"]


def test_socket_lives_in_the_namespace(host: NetnsHost) -> None:
    host.add_address("lo", "192.0.2.77/32")
    with host.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("192.0.2.77", 0))  # an address only the namespace has
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as root, pytest.raises(OSError):
        root.bind(("192.0.2.77", 0))


def test_socket_talks_to_a_spawned_server(host: NetnsHost) -> None:
    host.spawn([PY, "-c", SERVE_TCP, "127.0.0.1", "7003"], name="srv", ready=TcpListening(7003))
    with host.socket() as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", 7003))


def test_base_sysctls(host: NetnsHost) -> None:
    assert host.sysctl("net.ipv6.conf.all.accept_dad") == "0"
    assert host.sysctl("net.ipv4.conf.all.rp_filter") == "0"
    assert host.sysctl("net.ipv4.ip_forward") == "0"
    assert host.sysctl("net.ipv4.ping_group_range").split() == ["0", "2147483647"]


def test_close_kills_untracked_processes_and_verifies(
    require_root: None, artifacts, request: pytest.FixtureRequest
) -> None:
    from harness.state import state

    h = NetnsHost(state(request.config).namer.scope().netns("x"), log_dir=artifacts.dir / "x")
    # A daemon the host did not spawn (double fork, own session): only `ip netns pids`
    # finds it.
    try:
        h.run([tool("setsid"), "-f", tool("sleep"), "300"], check=True)
        pids = netns_pids(h.name)
        assert pids
    finally:
        h.close()
    assert not Path(f"/run/netns/{h.name}").exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    h.close()  # idempotent
