"""Proxy groups end to end on 127.0.0.1: real sockets, scripted HTTP CONNECT proxies.

Each scripted proxy answers CONNECT with 200 and then echoes what it gets, prefixed with
its own name, so a test sees which member carried a flow (and the stream's `via` must
agree). A member "dies" when its server closes (connects are then refused) and "returns"
when a server listens on the same port again. The config is real TOML through
`load_config`; the group is built by `build_outbounds`, as `ztun run` builds it. Waits
are for health transitions, through the monitor's `listen` hook, never for time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_outbound_adapters import LOOPBACK, run

from ztun.outbound import (
    NoMemberUp,
    ProxyRefused,
    ProxyUnreachable,
    Socks5Outbound,
    Target,
    TcpStream,
    UdpNotSupported,
)
from ztun.outbound.build import OutboundSet, build_outbounds
from ztun.outbound.health import CameUp, Event, WentDown
from ztun.outbound.probe import Probed
from ztun.outbound.socks5_proto import Command, PipelineState, encode_request
from ztun.rules import Config, load_config

EVENT_TIMEOUT = 5.0
TARGET = Target("192.0.2.9", 80)  # named in CONNECT only; the scripted proxies go nowhere


@dataclass
class Options:
    config: Config
    udp_proxy: str | None = None
    connect_timeout: float = 5.0
    fwmark: int | None = None
    bind_interface: str | None = None


class ScriptedProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that answers `status` and echoes, name-tagged."""

    def __init__(self, name: str, status: bytes = b"200 Connection established") -> None:
        self.name = name
        self.status = status
        self.port = 0
        self.server: asyncio.Server | None = None
        self.silent = False
        self.slow_targets: set[bytes] = set()  # CONNECTs to these get no answer

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            request = await reader.readuntil(b"\r\n\r\n")
            target = request.split(b" ", 2)[1] if request.startswith(b"CONNECT ") else b""
            if self.silent or target in self.slow_targets:
                await reader.read()
                return
            writer.write(b"HTTP/1.1 " + self.status + b"\r\n\r\n")
            while data := await reader.read(4096):
                writer.write(self.name.encode() + b":" + data)
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def proxies(*names: str) -> AsyncIterator[dict[str, ScriptedProxy]]:
    started = {name: ScriptedProxy(name) for name in names}
    for proxy in started.values():
        await proxy.start()
    try:
        yield started
    finally:
        for proxy in started.values():
            if proxy.server is not None and proxy.server.is_serving():
                await proxy.stop()


def config(
    tmp_path: Path, servers: dict[str, ScriptedProxy], group: str, extra: str = ""
) -> Config:
    text = f'default_outbound = "g"\n{extra}\n\n'  # top-level keys before any table
    text += "".join(
        f'[[proxies]]\nname = "{n}"\nurl = "http://{LOOPBACK}:{p.port}"\n\n'
        for n, p in servers.items()
    )
    members = ", ".join(f'"{n}"' for n in servers)
    text += f"[groups.g]\nmembers = [{members}]\n{group}\n"
    path = tmp_path / "ztun.toml"
    path.write_text(text)
    return load_config(path)


async def carried_by(outbounds: OutboundSet, name: str = "g") -> str:
    """Open a flow through `name`, send a line, return who echoed it (and check `via`)."""
    stream = await outbounds[name].open_tcp(TARGET)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(stream.sock, b"hi")
        answer = await asyncio.wait_for(loop.sock_recv(stream.sock, 64), EVENT_TIMEOUT)
        who = answer.decode().partition(":")[0]
        assert stream.via == who
        return who
    finally:
        stream.sock.close()
        stream.release()


class Transitions:
    """The health hook: await a member going down or up (no polling)."""

    def __init__(self, outbounds: OutboundSet) -> None:
        self.seen: list[Event | Probed] = []
        self._changed = asyncio.Event()
        outbounds.monitor.listen(self._on_event)

    def _on_event(self, event: Event | Probed) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait(self, match: Callable[[Event | Probed], bool]) -> Event | Probed:
        async with asyncio.timeout(EVENT_TIMEOUT):
            while True:
                for event in self.seen:
                    if match(event):
                        return event
                self._changed.clear()
                await self._changed.wait()


def down(name: str) -> Callable[[Event | Probed], bool]:
    return lambda e: isinstance(e, WentDown) and e.name == name


def up(name: str) -> Callable[[Event | Probed], bool]:
    return lambda e: isinstance(e, CameUp) and e.name == name


# -- failover ----------------------------------------------------------------------------------


def test_failover_moves_to_the_second_and_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            outbounds = build_outbounds(Options(config(tmp_path, servers, "interval = 0.5")))
            hook = Transitions(outbounds)
            try:
                assert [await carried_by(outbounds) for _ in range(3)] == ["a", "a", "a"]
                assert outbounds.groups_snapshot()["g"] == {
                    "policy": "failover",
                    "members": ["a", "b"],
                    "active": "a",
                }
                await servers["a"].stop()
                # The first flow after the death finds a refused, which takes it out at
                # once, and is retried on b: the app never sees the failure.
                assert await carried_by(outbounds) == "b"
                event = await hook.wait(down("a"))
                assert isinstance(event, WentDown)
                assert "http proxy 127.0.0.1" in event.error and "refused" in event.error
                assert await carried_by(outbounds) == "b"
                assert outbounds.groups_snapshot()["g"]["active"] == "b"
                await servers["a"].start()  # the same port again
                await hook.wait(up("a"))  # found by the down member's recheck
                assert await carried_by(outbounds) == "a"
                health = {h["name"]: h for h in outbounds.health_snapshot()}
                assert health["a"]["up"] and health["a"]["failures"] == 0
                assert health["a"]["url"] == f"http://127.0.0.1:{servers['a'].port}"
                assert health["a"]["last_error"] == event.error
            finally:
                await outbounds.close()

    run(scenario())


def test_every_member_down_fails_closed_then_recovers_on_first_try(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            outbounds = build_outbounds(Options(config(tmp_path, servers, "")))
            hook = Transitions(outbounds)
            try:
                for proxy in servers.values():
                    await proxy.stop()
                with pytest.raises(ProxyUnreachable):
                    await outbounds["g"].open_tcp(TARGET)  # a refused, retried on b: refused
                await hook.wait(down("a"))
                await hook.wait(down("b"))
                # No member is up: the group still tries its first member once (fail
                # closed: the flow is refused when that fails too) ...
                with pytest.raises(ProxyUnreachable, match="refused"):
                    await outbounds["g"].open_tcp(TARGET)
                # ... so a proxy that is back carries the next flow without waiting for
                # a probe.
                await servers["a"].start()
                assert await carried_by(outbounds) == "a"
                assert outbounds.monitor.health.is_up("a")
            finally:
                await outbounds.close()

    run(scenario())


def test_fail_open_goes_direct_when_every_member_is_down(tmp_path: Path) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"direct:" + await reader.read(64))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        target = await asyncio.start_server(echo, LOOPBACK, 0)
        port = target.sockets[0].getsockname()[1]
        async with proxies("a") as servers:
            outbounds = build_outbounds(Options(config(tmp_path, servers, "", "fail_open = true")))
            hook = Transitions(outbounds)
            try:
                await servers["a"].stop()
                with pytest.raises(ProxyUnreachable):
                    await outbounds["g"].open_tcp(TARGET)
                await hook.wait(down("a"))
                stream = await outbounds["g"].open_tcp(Target(LOOPBACK, port))
                with stream.sock:
                    assert stream.via is None  # not through a proxy
                    loop = asyncio.get_running_loop()
                    await loop.sock_sendall(stream.sock, b"x")
                    assert await loop.sock_recv(stream.sock, 64) == b"direct:x"
            finally:
                await outbounds.close()
                target.close()

    run(scenario())


def test_the_targets_refusal_is_not_retried_nor_held_against_the_proxy(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            servers["a"].status = b"500 Unable to connect"  # tinyproxy's "target refused"
            outbounds = build_outbounds(Options(config(tmp_path, servers, "")))
            try:
                for _ in range(3):
                    with pytest.raises(ProxyRefused, match="answered 500 Unable to connect"):
                        await outbounds["g"].open_tcp(TARGET)
                assert outbounds.monitor.health.state("a").failures == 0
                assert outbounds.monitor.health.is_up("a")
            finally:
                await outbounds.close()

    run(scenario())


def test_a_silent_member_gets_half_the_timeout_then_the_next_one_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            servers["a"].silent = True
            options = Options(config(tmp_path, servers, ""), connect_timeout=0.6)
            outbounds = build_outbounds(options)
            try:
                async with asyncio.timeout(options.connect_timeout):  # as the engine bounds it
                    assert await carried_by(outbounds) == "b"
                state = outbounds.monitor.health.state("a")
                assert state.failures == 1 and "no answer within 0.3s" in str(state.last_error)
            finally:
                await outbounds.close()

    run(scenario())


def test_a_slow_target_leaves_the_proxy_up_when_the_probe_gets_through(tmp_path: Path) -> None:
    """The first member waits on the flow's target (as danted does while the target drops
    SYNs): the flow moves on to the next member, and the group's probe -- answered at
    once -- decides that the proxy is fine."""

    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            servers["a"].slow_targets.add(f"{TARGET.host}:{TARGET.port}".encode())
            cfg = config(tmp_path, servers, 'probe = "192.0.2.10:80"\ninterval = 60')
            options = Options(cfg, connect_timeout=0.6)
            outbounds = build_outbounds(options)
            seen = Transitions(outbounds)
            try:
                for _ in range(3):  # DOWN_AFTER is 2: three timeouts would have taken a down
                    async with asyncio.timeout(options.connect_timeout):
                        assert await carried_by(outbounds) == "b"
                    await seen.wait(lambda e: isinstance(e, Probed) and e.name == "a")
                    seen.seen.clear()
                assert outbounds.monitor.health.is_up("a")
                assert outbounds.monitor.health.state("a").failures == 0
            finally:
                await outbounds.close()

    run(scenario())


def test_a_silent_proxy_is_taken_down_by_the_probe_its_timeout_starts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            servers["a"].silent = True
            cfg = config(tmp_path, servers, 'probe = "192.0.2.10:80"\ninterval = 60')
            options = Options(cfg, connect_timeout=0.6)
            outbounds = build_outbounds(options)
            seen = Transitions(outbounds)
            try:
                async with asyncio.timeout(options.connect_timeout):
                    assert await carried_by(outbounds) == "b"
                probed = await seen.wait(lambda e: isinstance(e, Probed) and e.name == "a")
                assert isinstance(probed, Probed) and probed.error is not None
            finally:
                await outbounds.close()

    run(scenario())


# -- other policies ----------------------------------------------------------------------------


def test_round_robin_takes_turns(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b", "c") as servers:
            cfg = config(tmp_path, servers, 'policy = "round-robin"')
            outbounds = build_outbounds(Options(cfg))
            try:
                assert [await carried_by(outbounds) for _ in range(4)] == ["a", "b", "c", "a"]
            finally:
                await outbounds.close()

    run(scenario())


def test_least_connections_counts_open_flows(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            cfg = config(tmp_path, servers, 'policy = "least-connections"')
            outbounds = build_outbounds(Options(cfg))
            group = outbounds["g"]
            try:
                held: list[TcpStream] = [await group.open_tcp(TARGET) for _ in range(3)]
                assert [s.via for s in held] == ["a", "b", "a"]
                health = {h["name"]: h["active"] for h in outbounds.health_snapshot()}
                assert health == {"a": 2, "b": 1}
                for stream in held[:2]:  # one flow on each closes; release twice: no harm
                    stream.sock.close()
                    stream.release()
                    stream.release()
                assert {h["name"]: h["active"] for h in outbounds.health_snapshot()} == {
                    "a": 1,
                    "b": 0,
                }
                assert await carried_by(outbounds) == "b"
                held[2].sock.close()
            finally:
                await outbounds.close()

    run(scenario())


# -- probes and UDP ----------------------------------------------------------------------------


def test_a_probe_target_is_connected_through_each_member(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            cfg = config(tmp_path, servers, 'probe = "192.0.2.10:80"\ninterval = 0.2')
            outbounds = build_outbounds(Options(cfg))
            hook = Transitions(outbounds)
            try:
                probe = await hook.wait(lambda e: isinstance(e, Probed) and e.name == "a")
                assert isinstance(probe, Probed) and probe.rtt_ms is not None
                assert outbounds.monitor.health.state("a").rtt_ms == probe.rtt_ms
                await servers["b"].stop()
                # With no traffic at all, the probe finds b dead.
                event = await hook.wait(down("b"))
                assert isinstance(event, WentDown) and "refused" in event.error
            finally:
                await outbounds.close()

    run(scenario())


def test_probes_through_a_socks5_member_never_run_its_pipelining_trial(
    tmp_path: Path,
) -> None:
    """microsocks reads the greeting with one recv() and drops a request sent with it. A
    probe that was the pipelining trial waited for the trial's 1 s bound, which its own
    1 s timeout (interval <= 1 s) ended first: the probe failed, or timed ~1002 ms. Now
    probes send apart until pipelining is on: every one gets through, and the trial is
    left to a flow."""
    first_reads: list[bytes] = []
    request = encode_request(Command.CONNECT, Target("192.0.2.10", 80))

    async def microsocks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            first_reads.append(await reader.read(512))  # what came with it is dropped
            writer.write(bytes.fromhex("0500"))
            assert await reader.readexactly(len(request)) == request
            writer.write(bytes.fromhex("05 00 00 01 7f000001 0050"))
            await reader.read()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(microsocks, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        path = tmp_path / "ztun.toml"
        path.write_text(
            'default_outbound = "g"\n\n'
            f'[[proxies]]\nname = "a"\nurl = "socks5://{LOOPBACK}:{port}"\n\n'
            '[groups.g]\nmembers = ["a"]\nprobe = "192.0.2.10:80"\ninterval = 0.2\n'
        )
        outbounds = build_outbounds(Options(load_config(path)))
        hook = Transitions(outbounds)
        try:

            def probe_of_a(event: Event | Probed) -> bool:
                return isinstance(event, Probed) and event.name == "a"

            await hook.wait(lambda e: probe_of_a(e) and sum(map(probe_of_a, hook.seen)) >= 4)
            done = [e for e in hook.seen if probe_of_a(e)]
            assert all(isinstance(e, Probed) and e.error is None for e in done), done
            assert outbounds.monitor.health.state("a").up
            member = outbounds.members["a"].outbound
            assert isinstance(member, Socks5Outbound)
            assert member.pipelining.state is PipelineState.TRIAL  # for a flow to try
        finally:
            await outbounds.close()
            server.close()

    run(scenario())
    assert first_reads and all(read == bytes.fromhex("050100") for read in first_reads)


def test_udp_of_a_group_without_udp_capable_members_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with proxies("a") as servers:
            outbounds = build_outbounds(Options(config(tmp_path, servers, "")))
            try:
                with pytest.raises(UdpNotSupported, match="group g: no member carries UDP"):
                    await outbounds["g"].open_udp(lambda _t, _p: None)
            finally:
                await outbounds.close()

    run(scenario())


def test_udp_proxy_carries_the_udp_of_the_default_group(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = load_config(None, {"proxy": ["http://127.0.0.1:3128"]})
        outbounds = build_outbounds(Options(cfg, udp_proxy="direct://"))
        try:
            association = await outbounds["default"].open_udp(lambda _t, _p: None)
            association.close()
            names = [h["name"] for h in outbounds.health_snapshot()]
            assert names == ["proxy1"]
        finally:
            await outbounds.close()

    run(scenario())


def test_the_router_hands_out_named_outbounds_and_reports_their_health(tmp_path: Path) -> None:
    import ipaddress

    from ztun.router import Router
    from ztun.rules import Action

    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            cfg = config(tmp_path, servers, "", '\n[[rules]]\nport = 22\noutbound = "b"\n')
            outbounds = build_outbounds(Options(cfg))
            try:
                router = Router(outbounds=outbounds, rules=cfg.rule_set())
                ssh = router.decide("tcp", ipaddress.ip_address("192.0.2.1"), 22)
                web = router.decide("tcp", ipaddress.ip_address("192.0.2.1"), 443)
                assert (ssh.name, ssh.action, ssh.outbound) == ("b", Action.PROXY, outbounds["b"])
                assert (web.name, web.outbound) == ("g", outbounds["g"])
                assert router.health_snapshot() == outbounds.health_snapshot()
                assert router.groups_snapshot() == {
                    "default": {"policy": "failover", "members": ["a", "b"], "active": "a"},
                    "g": {"policy": "failover", "members": ["a", "b"], "active": "a"},
                }
            finally:
                await outbounds.close()

    run(scenario())


def test_udp_of_a_group_with_no_member_up_is_refused_as_a_reject_rule_would(
    tmp_path: Path,
) -> None:
    """The engine answers a Rejected UDP flow with ICMP unreachable: fail closed."""
    import socket

    async def scenario() -> None:
        with socket.socket() as placeholder:  # bound, not listening: connects are refused
            placeholder.bind((LOOPBACK, 0))
            port = placeholder.getsockname()[1]
            path = tmp_path / "ztun.toml"
            path.write_text(
                f'[[proxies]]\nname = "s"\nurl = "socks5://{LOOPBACK}:{port}"\n'
                '[groups.g]\nmembers = ["s"]\n'
            )
            outbounds = build_outbounds(Options(load_config(path)))
            try:
                with pytest.raises(ProxyUnreachable):  # s was up: its own error
                    await outbounds["g"].open_udp(lambda _t, _p: None)
                assert not outbounds.monitor.health.is_up("s")
                with pytest.raises(NoMemberUp, match="group g: no member is up"):
                    await outbounds["g"].open_udp(lambda _t, _p: None)
            finally:
                await outbounds.close()

    run(scenario())


def test_flows_are_named_after_the_proxy_that_carries_them(tmp_path: Path) -> None:
    """contracts 2 and 3: a flow's `outbound` is a proxy's name, direct or reject."""
    from ztun.router import Router

    async def scenario() -> None:
        async with proxies("a", "b") as servers:
            cfg = config(tmp_path, servers, "")
            outbounds = build_outbounds(Options(cfg))
            try:
                router = Router(outbounds=outbounds, rules=cfg.rule_set())
                group = outbounds["g"]
                assert group.member_for("tcp") == "a"  # type: ignore[attr-defined]
                assert group.member_for("udp") is None  # type: ignore[attr-defined]
                assert router.name_of(outbounds["direct"]) == "direct"
                assert router.name_of(router.reject) == "reject"
                assert router.name_of(outbounds["b"]) == "b"
                await servers["a"].stop()
                stream = await group.open_tcp(TARGET)  # a refused, retried on b
                stream.sock.close()
                assert stream.via == "b" and group.member_for("tcp") == "b"  # type: ignore[attr-defined]
            finally:
                await outbounds.close()

    run(scenario())
