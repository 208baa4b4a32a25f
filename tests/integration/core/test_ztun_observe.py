"""Seeing and steering a running ztun (issue 15), end to end in namespaces.

ztun runs in the client namespace of a fresh topology with danted as the proxy and the
seeded data/echo servers behind it; the commands (`ztun flows`, `status`, `close`,
`reload`) run in the same namespace, as a user there would, and find the instance by
discovery; metrics are scraped over the namespace's loopback; sd_notify arrives on a
datagram socket the test binds. Every wait is for an event: a log line, a reply, a
datagram.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ztun_path import DATA_PORT, DEVICE, ECHO_PORT, SOCKS_PORT, UDP_ECHO_PORT

from harness.hosts import LogLine
from harness.impls.base import DEFAULT_ADDRESSES, route_into
from harness.impls.ztun import default_binary
from harness.peers.starters import start_danted
from harness.peers.targets import seeded_sha256
from harness.topo import Topology
from ztun.tools import tool

pytestmark = [pytest.mark.netns, pytest.mark.linux]

MIB = 1 << 20
METRICS_PORT = 9100
START_TIMEOUT = 30.0
EVENT_TIMEOUT = 30.0


@dataclass
class Running:
    """ztun started in the client namespace, and how to talk to it there."""

    topo: Topology
    process: Any
    proxy_url: str

    @property
    def server(self) -> str:
        return str(self.topo.address("server", "proxy", 4))

    def ctl(self, *args: str) -> Any:
        """`ztun ARGS` run in the client namespace (instance found by discovery)."""
        return self.topo.client.run([default_binary(), *args], timeout=30)

    def flows(self, *args: str) -> list[dict[str, Any]]:
        result = self.ctl("flows", "--json", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        flows: list[dict[str, Any]] = json.loads(result.stdout)
        return flows

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """GET /metrics over the client namespace's loopback, parsed by prometheus_client."""
        from prometheus_client.parser import text_string_to_metric_families

        sock = self.topo.client.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", METRICS_PORT))
        conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=10)
        conn.sock = sock
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200
            text = response.read().decode()
        finally:
            conn.close()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def connect(self, port: int) -> socket.socket:
        sock = self.topo.client.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect((self.server, port))
        return sock

    def echo(self, payload: bytes) -> bytes:
        with self.connect(ECHO_PORT) as sock:
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
            return received

    def wait_log(self, pattern: str) -> None:
        self.process.wait_for(LogLine(pattern), timeout=EVENT_TIMEOUT)


class Download:
    """A SOURCE download the test reads at its own pace (stalled flows stay open)."""

    def __init__(self, running: Running, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.sock = running.connect(DATA_PORT)
        self.request = f"SOURCE {size} {seed}\n".encode()
        self.sock.sendall(self.request)
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, at_least: int) -> None:
        while self.count < at_least:
            data = self.sock.recv(1 << 20)
            assert data, f"download ended at {self.count} bytes"
            self.digest.update(data)
            self.count += len(data)

    def finish(self) -> tuple[int, str]:
        while data := self.sock.recv(1 << 20):
            self.digest.update(data)
            self.count += len(data)
        self.sock.close()
        return self.count, self.digest.hexdigest()

    def expected(self) -> tuple[int, str]:
        return self.size, seeded_sha256(self.seed, self.size)


@pytest.fixture
def start_ztun(servers: Topology, require_root: None) -> Iterator[Any]:
    """start_ztun(*flags, env=None, proxy=True, ready=None): ztun in the client namespace,
    ready (its "ztun ready" line, or `ready()` returned: log lines may go to a file)."""
    started: list[Any] = []
    socks: list[Any] = []

    def start(
        *flags: str,
        env: dict[str, str] | None = None,
        proxy: bool = True,
        ready: Callable[[], None] | None = None,
        wrap: tuple[str, ...] = (),
    ) -> Running:
        topo = servers
        if not socks:
            socks.append(
                start_danted(topo.proxy, str(topo.address("proxy", "client", 4)), SOCKS_PORT)
            )
        argv = [*wrap, default_binary(), "run", "--device", f"tun://{DEVICE}"]
        if proxy:
            argv += ["--proxy", socks[0].url]
        for cidr in DEFAULT_ADDRESSES:
            argv += ["--address", cidr]
        process = topo.client.spawn(
            [*argv, *flags],
            name="ztun",
            ready=None if ready else LogLine("ztun ready"),
            timeout=START_TIMEOUT,
            env=env,
        )
        started.append(process)
        if ready is not None:
            ready()
        route_into(topo.client, DEVICE, DEFAULT_ADDRESSES)
        return Running(topo, process, socks[0].url)

    yield start
    for process in started:
        process.stop()


def test_a_running_download_is_listed_and_counted(start_ztun, rng) -> None:  # type: ignore[no-untyped-def]
    """100 MiB down: listed by `ztun flows --json` while it runs, then counted by
    ztun_bytes_total{direction="down"} within 1 %."""
    ztun = start_ztun("--metrics", f"127.0.0.1:{METRICS_PORT}")
    ztun.wait_log(r"control /run/ztun/zt0@\d+\.sock metrics=http://127\.0\.0\.1:9100/metrics")
    download = Download(ztun, 100 * MIB, rng.randrange(1 << 31))
    download.read(4 * MIB)  # then the app stops reading: the flow stays open, stalled
    flows = ztun.flows()
    assert len(flows) == 1, flows
    flow = flows[0]
    src = download.sock.getsockname()
    assert flow["proto"] == "tcp" and flow["state"] == "open"
    assert flow["src"] == f"{src[0]}:{src[1]}"
    assert flow["dst"] == f"{ztun.server}:{DATA_PORT}" and flow["outbound"] == "proxy1"
    assert flow["bytes_down"] >= 4 * MIB and flow["bytes_up"] == len(download.request)
    assert ztun.flows("--proto", "udp") == []
    assert ztun.flows("--dst", f"{ztun.server}/32")[0]["id"] == flow["id"]
    assert download.finish() == download.expected()
    metrics = ztun.scrape()
    down = metrics[("ztun_bytes_total", (("direction", "down"), ("proto", "tcp")))]
    assert abs(down - 100 * MIB) <= 0.01 * 100 * MIB, down
    assert metrics[("ztun_flows_total", (("outbound", "proxy1"), ("proto", "tcp")))] == 1
    assert metrics[("ztun_connect_seconds_count", ())] == 1
    status = json.loads(ztun.ctl("status", "--json").stdout)
    assert status["instance"]["device"] == DEVICE and status["instance"]["workers"] == 1
    mode = stat.S_IMODE(os.stat(status["instance"]["control"]).st_mode)
    assert mode == 0o600


def test_tun_packets_out_counts_what_the_pump_writes_back(start_ztun, rng) -> None:  # type: ignore[no-untyped-def]
    """Without the kernel NAT every TCP segment read from the TUN is rewritten and written
    back to it (the hairpin), so ztun_tun_packets_total{direction="out"} equals "in" less
    what was dropped. The pump's writes were not counted: "out" stayed at 0."""
    ztun = start_ztun("--no-kernel-nat", "--metrics", f"127.0.0.1:{METRICS_PORT}")
    payload = rng.randbytes(MIB)
    assert ztun.echo(payload) == payload
    metrics = ztun.scrape()
    frames_in = metrics[("ztun_tun_packets_total", (("direction", "in"),))]
    dropped = sum(v for (name, _), v in metrics.items() if name == "ztun_packets_dropped_total")
    assert frames_in > 2 * MIB // 65536  # at least the segments of 1 MiB up and 1 MiB down
    assert metrics[("ztun_tun_packets_total", (("direction", "out"),))] == frames_in - dropped


def test_a_udp_flow_is_listed_counted_and_closed(start_ztun, rng) -> None:  # type: ignore[no-untyped-def]
    ztun = start_ztun("--metrics", f"127.0.0.1:{METRICS_PORT}")
    sock = ztun.topo.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    with sock:
        sock.connect((ztun.server, UDP_ECHO_PORT))  # getsockname: the address the app used
        payloads = [rng.randbytes(rng.randrange(1, 1200)) for _ in range(5)]
        for payload in payloads:
            sock.sendto(payload, (ztun.server, UDP_ECHO_PORT))
            assert sock.recvfrom(65535)[0] == payload
        (flow,) = ztun.flows("--proto", "udp")
        ours = sock.getsockname()
        assert flow["src"] == f"{ours[0]}:{ours[1]}" and flow["outbound"] == "proxy1"
        assert flow["dst"] == f"{ztun.server}:{UDP_ECHO_PORT}" and flow["state"] == "open"
        total = sum(map(len, payloads))
        assert flow["bytes_up"] == flow["bytes_down"] == total
        metrics = ztun.scrape()
        assert metrics[("ztun_bytes_total", (("direction", "up"), ("proto", "udp")))] == total
        assert metrics[("ztun_flows_active", (("proto", "udp"),))] == 1
        assert metrics[("ztun_udp_sessions_active", ())] == 1
        assert ztun.ctl("close", str(flow["id"])).returncode == 0
        assert ztun.flows("--proto", "udp") == []
        sock.sendto(b"again", (ztun.server, UDP_ECHO_PORT))  # the session opens a new flow
        assert sock.recvfrom(65535)[0] == b"again"
        (again,) = ztun.flows("--proto", "udp")
        assert again["id"] != flow["id"] and again["bytes_up"] == len(b"again")


def test_close_resets_the_flow_it_names(start_ztun) -> None:  # type: ignore[no-untyped-def]
    ztun = start_ztun()
    with ztun.connect(ECHO_PORT) as kept, ztun.connect(ECHO_PORT) as closed:
        for sock in (kept, closed):
            sock.sendall(b"hello")
            assert sock.recv(100) == b"hello"
        ours = closed.getsockname()
        flow = next(f for f in ztun.flows() if f["src"] == f"{ours[0]}:{ours[1]}")
        result = ztun.ctl("close", str(flow["id"]))
        assert result.returncode == 0 and result.stdout == f"closed flow {flow['id']}\n"
        with pytest.raises(ConnectionResetError):
            closed.sendall(b"after")
            closed.recv(100)
        kept.sendall(b"still")
        assert kept.recv(100) == b"still"
    missing = ztun.ctl("close", "999")
    assert missing.returncode == 1 and "no flow 999" in missing.stderr


def test_close_resets_a_flow_still_being_set_up(start_ztun, servers) -> None:  # type: ignore[no-untyped-def]
    """A proxy that takes the connection and never answers holds the flow in set-up
    (loop callbacks and a timer, no Task): `ztun close` resets the app and closes ztun's
    connection to the proxy then, not at the connect timeout (two minutes here)."""
    proxy_addr = str(servers.address("proxy", "client", 4))
    silent = servers.proxy.socket(socket.AF_INET, socket.SOCK_STREAM)
    with silent:
        silent.bind((proxy_addr, 0))
        silent.listen(8)
        silent.settimeout(EVENT_TIMEOUT)
        url = f"socks5://{proxy_addr}:{silent.getsockname()[1]}"
        ztun = start_ztun("--proxy", url, "--connect-timeout", "120", proxy=False)
        with ztun.connect(ECHO_PORT) as app:
            toward_proxy, _ = silent.accept()  # ztun dials once the flow is routed
            with toward_proxy:
                toward_proxy.settimeout(EVENT_TIMEOUT)
                assert toward_proxy.recv(3) == bytes([5, 1, 0])  # the greeting, unanswered
                (flow,) = ztun.flows()
                assert flow["state"] == "connecting" and flow["outbound"] == "proxy1"
                result = ztun.ctl("close", str(flow["id"]))
                assert result.returncode == 0, result.stderr
                with pytest.raises(ConnectionResetError):
                    app.recv(100)
                # Whatever else was sent with the greeting, then the close: EOF.
                while toward_proxy.recv(100):
                    pass
        assert ztun.flows() == []


def write_config(path: Path, proxy: str, *lines: str) -> None:
    path.write_text("\n".join([f'proxy = "{proxy}"', *lines, ""]))


def test_sighup_sends_new_flows_to_reject_while_a_download_runs_on(  # type: ignore[no-untyped-def]
    start_ztun, servers, tmp_path, rng
) -> None:
    config = tmp_path / "ztun.toml"
    proxy_url = f"socks5://{servers.address('proxy', 'client', 4)}:{SOCKS_PORT}"
    write_config(config, proxy_url)
    ztun = start_ztun(
        "--config", str(config), "--metrics", f"127.0.0.1:{METRICS_PORT}", proxy=False
    )
    download = Download(ztun, 64 * MIB, rng.randrange(1 << 31))
    download.read(1 * MIB)
    write_config(
        config, proxy_url, "[[rules]]", f'cidr = ["{ztun.server}/32"]', 'action = "reject"'
    )
    ztun.process.send_signal(signal.SIGHUP)
    ztun.wait_log("reloaded, changed: rules")
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        ztun.echo(b"refused now")
    assert download.finish() == download.expected()  # the open flow kept its proxy
    metrics = ztun.scrape()
    assert metrics[("ztun_flows_total", (("outbound", "reject"), ("proto", "tcp")))] == 1
    assert metrics[("ztun_flows_total", (("outbound", "proxy1"), ("proto", "tcp")))] == 1


def test_a_broken_or_restart_needing_config_leaves_the_old_one_working(  # type: ignore[no-untyped-def]
    start_ztun, servers, tmp_path
) -> None:
    config = tmp_path / "ztun.toml"
    proxy_url = f"socks5://{servers.address('proxy', 'client', 4)}:{SOCKS_PORT}"
    write_config(config, proxy_url)
    ztun = start_ztun("--config", str(config), proxy=False)
    config.write_text(
        f'proxy = "{proxy_url}"\n[[rules]]\ncidr = ["not-a-cidr"]\naction = "reject"\n'
    )
    result = ztun.ctl("reload")
    assert result.returncode == 1
    assert f"{config}:3" in result.stderr and "the running config stays" in result.stderr
    ztun.process.send_signal(signal.SIGHUP)
    ztun.wait_log(rf"SIGHUP: reload failed, the running config stays: {config}:3")
    assert ztun.echo(b"still proxied") == b"still proxied"
    # (device and addresses come from flags here, which beat the file: not changes)
    write_config(config, proxy_url, 'device = "tun://zt9"', "mtu = 1400", '[dns]\nmode = "hijack"')
    result = ztun.ctl("reload")
    assert result.returncode == 1
    assert "mtu, dns.mode changed, which needs a restart" in result.stderr
    assert ztun.echo(b"and still") == b"and still"
    write_config(config, proxy_url, 'log_level = "debug"')
    result = ztun.ctl("reload")
    assert result.returncode == 0 and result.stdout == "reloaded, changed: log_level\n"


def test_a_reload_naming_a_proxy_udp_beside_udp_proxy_is_refused_whole(  # type: ignore[no-untyped-def]
    start_ztun, servers, tmp_path
) -> None:
    """`ztun run` refuses a proxy named `udp` beside --udp-proxy (exit 2); a reload adding
    one was an "internal error: ValueError" with a traceback in the log, after it had
    already switched the log settings. Now it is refused like any bad file."""
    config = tmp_path / "ztun.toml"
    proxy_url = f"socks5://{servers.address('proxy', 'client', 4)}:{SOCKS_PORT}"
    write_config(config, proxy_url)
    ztun = start_ztun("--config", str(config), "--udp-proxy", proxy_url, proxy=False)
    write_config(
        config,
        proxy_url,
        'log_level = "debug"',
        "[[proxies]]",
        'name = "udp"',
        f'url = "{proxy_url}"',
    )
    result = ztun.ctl("reload")
    assert result.returncode == 1, result.stdout
    assert result.stderr == (
        "ztun reload: reload failed, the running config stays: "
        "--udp-proxy is the proxy named 'udp': rename yours\n"
    )
    assert "Traceback" not in ztun.process.log_text()
    status = json.loads(ztun.ctl("status", "--json").stdout)
    assert [p["name"] for p in status["proxies"]] == ["proxy1", "udp"]
    write_config(config, proxy_url, 'log_level = "debug"')
    result = ztun.ctl("reload")  # the log level was not taken by the refused reload
    assert result.returncode == 0 and result.stdout == "reloaded, changed: log_level\n"
    assert ztun.echo(b"still proxied") == b"still proxied"


def _direct_rule(servers: Topology, tmp_path: Path, port: int, *conditions: str) -> Path:
    """A config sending the server's `port` direct (the routes send it into the TUN)."""
    config = tmp_path / "ztun.toml"
    proxy_url = f"socks5://{servers.address('proxy', 'client', 4)}:{SOCKS_PORT}"
    server = servers.address("server", "proxy", 4)
    rule = ["[[rules]]", f'cidr = ["{server}/32"]', f"port = [{port}]", *conditions]
    write_config(config, proxy_url, *rule, 'outbound = "direct"')
    return config


def test_a_direct_flow_routed_back_into_the_tun_is_refused_as_a_loop(  # type: ignore[no-untyped-def]
    start_ztun, servers, tmp_path
) -> None:
    """A `direct` rule while the routes send the destination into the TUN and nothing
    keeps ztun's own sockets out: ztun's direct connect enters its own TUN. It connected
    again for each, 9993 flows deep until "Too many open files"; now the flow that comes
    back is refused as a loop, the app gets a reset, and the rest runs on."""
    ztun = start_ztun("--config", str(_direct_rule(servers, tmp_path, DATA_PORT)), proxy=False)
    with (
        pytest.raises((ConnectionResetError, ConnectionRefusedError)),
        ztun.connect(DATA_PORT) as sock,
    ):
        sock.sendall(b"SOURCE 10 1\n")
        sock.recv(100)
    ztun.wait_log(r"refused a routing loop: ztun's own connect from \S+ to .*:5001 came back")
    status = json.loads(ztun.ctl("status", "--json").stdout)
    assert status["counters"]["tcp_loop_refused"] == 1, status["counters"]
    assert status["counters"]["tcp_flows"] == 2  # the app's, and its one echo
    assert ztun.echo(b"proxied as before") == b"proxied as before"


def test_a_direct_udp_flow_routed_back_into_the_tun_is_dropped_as_a_loop(  # type: ignore[no-untyped-def]
    start_ztun, servers, tmp_path
) -> None:
    """The UDP side of the loop above: one datagram under a `direct` UDP rule whose
    destination the routes send into the TUN made ~3700 UDP sessions, each a new direct
    association (a socket held until the UDP timeout) whose datagram came back in as the
    next. Now the datagram from ztun's own association is dropped, counted, logged once
    with the advice; the app's flow is the only one and the rest runs on."""
    config = _direct_rule(servers, tmp_path, UDP_ECHO_PORT, 'network = "udp"')
    ztun = start_ztun("--config", str(config), proxy=False)
    advice = r"\(keep ztun's sockets out of the routes into it: --auto-route, or --fwmark"
    with ztun.topo.client.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((ztun.server, UDP_ECHO_PORT))  # getsockname: the address the app used
        sock.send(b"once")
        ztun.wait_log(
            r"refused a routing loop: ztun's own UDP from \S+ to "
            rf"{ztun.server}:{UDP_ECHO_PORT} came back into the TUN {advice}"
        )
        sock.send(b"twice")  # loops once more: counted
        status = json.loads(ztun.ctl("status", "--json").stdout)
        for _ in range(100):  # the second datagram's round through the TUN, ~1 ms
            if status["counters"].get("udp_loop_refused", 0) >= 2:
                break
            status = json.loads(ztun.ctl("status", "--json").stdout)
        assert status["counters"]["udp_loop_refused"] == 2, status["counters"]
        ours = sock.getsockname()
        (flow,) = ztun.flows("--proto", "udp")
        assert flow["src"] == f"{ours[0]}:{ours[1]}" and flow["outbound"] == "direct"
    assert ztun.process.log_text().count("refused a routing loop") == 1
    assert ztun.echo(b"proxied as before") == b"proxied as before"


def test_with_two_workers_the_parent_lists_both(start_ztun, rng) -> None:  # type: ignore[no-untyped-def]
    ztun = start_ztun("--workers", "2")
    held = []
    try:
        for _ in range(24):  # random source ports: both workers get some
            sock = ztun.connect(ECHO_PORT)
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
            held.append(sock)
        flows = ztun.flows()
        workers = {f["id"].partition("-")[0] for f in flows}
        assert len(flows) == 24 and workers == {"w0", "w1"}, flows
        target = next(f for f in flows if f["id"].startswith("w1-"))
        assert ztun.ctl("close", target["id"]).returncode == 0
        port = int(target["src"].rpartition(":")[2])
        victim = next(s for s in held if s.getsockname()[1] == port)
        with pytest.raises(ConnectionResetError):
            victim.sendall(b"y")
            victim.recv(10)
        status = json.loads(ztun.ctl("status", "--json").stdout)
        assert status["instance"]["workers"] == 2
        assert status["flows"]["active"]["tcp"] == 23
        assert status["counters"]["tcp_flows"] == 24
        # Every worker checks the proxy itself; the parent sums its open flows.
        assert [(p["name"], p["up"], p["active"]) for p in status["proxies"]] == [
            ("proxy1", True, 23)
        ]
        assert status["groups"] == {
            "default": {"policy": "failover", "members": ["proxy1"], "active": "proxy1"}
        }
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket for sd_notify, and the environment that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(EVENT_TIMEOUT)
    with sock:
        yield sock, {"NOTIFY_SOCKET": str(tmp_path / "notify")}


def test_sd_notify_on_a_real_datagram_socket(start_ztun, servers, tmp_path, notify) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "ztun.toml"
    proxy_url = f"socks5://{servers.address('proxy', 'client', 4)}:{SOCKS_PORT}"
    write_config(config, proxy_url)
    notify, env = notify
    ztun = start_ztun("--config", str(config), env=env, proxy=False)
    ready = notify.recv(4096).decode().splitlines()
    assert ready[0] == "READY=1" and f"MAINPID={ztun.process.pid}" in ready
    ztun.process.send_signal(signal.SIGHUP)
    assert notify.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert notify.recv(4096).decode().startswith("READY=1")
    assert ztun.ctl("reload").returncode == 0  # ExecReload's way: the same bracket
    assert notify.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert notify.recv(4096).decode().startswith("READY=1")
    ztun.process.send_signal(signal.SIGTERM)
    assert notify.recv(4096) == b"STOPPING=1"
    assert ztun.process.wait(EVENT_TIMEOUT) == 0


def assert_ready(datagram: bytes) -> None:
    assert datagram.startswith(b"READY=1\n"), datagram


def test_every_new_config_key_works(start_ztun, servers, tmp_path, notify) -> None:  # type: ignore[no-untyped-def]
    """control, metrics, pid_file, log_file, log_format, log_flows and log_level, from
    the file alone; then SIGUSR1 reopens the log file after a rotation."""
    config = tmp_path / "ztun.toml"
    control, log_file, pid_file = tmp_path / "c.sock", tmp_path / "ztun.log", tmp_path / "ztun.pid"
    proxy_url = f"socks5://{servers.address('proxy', 'client', 4)}:{SOCKS_PORT}"
    write_config(
        config,
        proxy_url,
        f'control = "{control}"',
        f'metrics = "127.0.0.1:{METRICS_PORT}"',
        f'pid_file = "{pid_file}"',
        f'log_file = "{log_file}"',
        'log_format = "json"',
        "log_flows = true",
        'log_level = "debug"',
    )
    notify, env = notify
    # The log goes to the file: readiness is sd_notify's READY=1.
    ztun = start_ztun(
        "--config", str(config), proxy=False, env=env, ready=lambda: assert_ready(notify.recv(4096))
    )
    assert stat.S_IMODE(os.stat(control).st_mode) == 0o600
    assert pid_file.read_text() == f"{ztun.process.pid}\n"
    assert ztun.echo(b"one flow") == b"one flow"
    assert ztun.scrape()[("ztun_flows_total", (("outbound", "proxy1"), ("proto", "tcp")))] == 1
    os.rename(log_file, tmp_path / "ztun.log.1")
    ztun.process.send_signal(signal.SIGUSR1)
    result = ztun.ctl("status", "--control", str(control))  # logs at debug into the new file
    assert result.returncode == 0
    ztun.process.stop()
    old = [json.loads(line) for line in (tmp_path / "ztun.log.1").read_text().splitlines()]
    new = [json.loads(line) for line in log_file.read_text().splitlines()]
    ready = next(e["message"] for e in old if e["message"].startswith("ztun ready"))
    assert f" proxy=default(failover:proxy1={proxy_url}) " in ready  # what new flows use
    assert any(e["level"] == "debug" for e in old)
    closed = [e for e in old + new if e.get("event") == "flow_closed"]
    assert len(closed) == 1 and closed[0]["flow"]["outbound"] == "proxy1"
    assert closed[0]["flow"]["bytes_up"] == closed[0]["flow"]["bytes_down"] == len(b"one flow")
    assert any(e["message"].startswith("ztun stopped") for e in new)
    assert not pid_file.exists() and not control.exists()


CAP_NET_ADMIN = 12  # linux/capability.h


def test_cap_net_admin_is_all_a_plain_run_needs(start_ztun) -> None:  # type: ignore[no-untyped-def]
    """The README's unit grants capabilities instead of root: with CAP_NET_ADMIN alone
    (uid 0 kept, so /dev/net/tun's owner permission still applies) ztun creates its TUN,
    marks its sockets (SO_MARK) and carries flows; with no capability it cannot start."""
    only = (tool("setpriv"), "--bounding-set=-all,+net_admin", "--")
    ztun = start_ztun("--fwmark", "256", wrap=only)
    status = Path(f"/proc/{ztun_pid(ztun)}/status").read_text()
    effective = int(
        next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16
    )
    assert effective == 1 << CAP_NET_ADMIN
    assert ztun.echo(b"carried with one capability") == b"carried with one capability"
    ztun.process.stop()
    none = ztun.topo.client.run(
        [
            tool("setpriv"),
            "--bounding-set=-all",
            "--",
            default_binary(),
            "run",
            "--device",
            "tun://zt1",
            "--proxy",
            ztun.proxy_url,
        ],
        timeout=30,
    )
    assert none.returncode == 1 and "Operation not permitted" in none.stdout + none.stderr


def ztun_pid(running: Running) -> int:
    """The ztun process under `ip netns exec` and setpriv (each execs the next: one pid)."""
    return int(running.process.pid)


def test_with_two_workers_a_reload_reaches_both_and_systemd_hears_the_parent(  # type: ignore[no-untyped-def]
    start_ztun, servers, tmp_path, notify
) -> None:
    config = tmp_path / "ztun.toml"
    proxy_url = f"socks5://{servers.address('proxy', 'client', 4)}:{SOCKS_PORT}"
    write_config(config, proxy_url)
    notify, env = notify
    ztun = start_ztun("--config", str(config), "--workers", "2", env=env, proxy=False)
    ready = notify.recv(4096).decode().splitlines()
    assert ready[0] == "READY=1" and f"MAINPID={ztun.process.pid}" in ready
    for _ in range(8):  # random source ports: both workers carry some
        assert ztun.echo(b"before") == b"before"
    write_config(
        config, proxy_url, "[[rules]]", f'cidr = ["{ztun.server}/32"]', 'action = "reject"'
    )
    result = ztun.ctl("reload")
    assert result.returncode == 0 and result.stdout == "reloaded, changed: rules\n"
    assert notify.recv(4096).decode().startswith("RELOADING=1")
    assert notify.recv(4096).decode().startswith("READY=1")
    for worker in (0, 1):  # each swapped in the same config
        ztun.wait_log(rf"ztun\[w{worker}\]: reloaded, changed: rules")
    for _ in range(8):
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            ztun.echo(b"after")
    status = json.loads(ztun.ctl("status", "--json").stdout)
    rejected = [r for r in status["flows"]["opened"] if r["outbound"] == "reject"]
    assert rejected == [{"proto": "tcp", "outbound": "reject", "count": 8}]
    assert status["counters"]["tcp_flows"] == 16
