"""The HTTP CONNECT and SOCKS4/4a adapters against scripted servers on 127.0.0.1.

A scripted proxy says exactly what a test needs (a 407, a 500, tunnel bytes in the same
segment as the reply, silence), which real servers cannot be made to do on demand; the
real ones (tinyproxy, danted, ssh -D) are in tests/integration/outbound. Targets such as
192.0.2.x are only ever *named* in requests: the scripted proxy connects nowhere.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from test_outbound_adapters import LOOPBACK, TEST_NET, run, scripted_proxy

from ztun.outbound import (
    HttpConnectOutbound,
    OutboundError,
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    Socks4Outbound,
    Target,
    TargetUnsupported,
    UdpNotSupported,
    make_outbound,
)

H = bytes.fromhex
Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter


async def _read_head(reader: Reader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# -- HTTP CONNECT ---------------------------------------------------------------------------


def test_http_connect_with_credentials_and_early_bytes() -> None:
    seen: list[bytes] = []

    async def handler(reader: Reader, writer: Writer) -> None:
        seen.append(await _read_head(reader))
        # The answer and the server's banner in one segment: the banner must not be lost.
        writer.write(b"HTTP/1.0 200 Connection established\r\n\r\n220 ready\r\n")
        writer.write(await reader.readexactly(5))
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = make_outbound(f"http://al%40ice:p%3Aw@{LOOPBACK}:{port}")
            assert isinstance(outbound, HttpConnectOutbound)
            stream = await outbound.open_tcp(Target("example.test", 443))
            with stream.sock:
                assert stream.early == b"220 ready\r\n"
                assert stream.sock.getblocking() is False
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(stream.sock, b"hello")
                assert await loop.sock_recv(stream.sock, 16) == b"hello"

    run(scenario())
    assert seen == [
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n"
        b"Proxy-Authorization: Basic YWxAaWNlOnA6dw==\r\n\r\n"  # "al@ice:p:w"
    ]


@pytest.mark.parametrize(
    ("url_auth", "answer", "error", "message", "target_fault"),
    [
        (
            "",
            b'HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"',
            ProxyAuthFailed,
            'answered 407 Proxy Authentication Required (Basic realm="t"): give credentials',
            None,
        ),
        (
            "u:bad@",
            b"HTTP/1.0 407 Proxy Authentication Required",
            ProxyAuthFailed,
            "answered 407 Proxy Authentication Required: username 'u' not accepted",
            None,
        ),
        # tinyproxy 1.11 answers wrong credentials with 401
        (
            "u:bad@",
            b"HTTP/1.0 401 Unauthorized",
            ProxyAuthFailed,
            "answered 401 Unauthorized: username 'u' not accepted",
            None,
        ),
        (
            "",
            b"HTTP/1.0 500 Unable to connect",
            ProxyRefused,
            "answered 500 Unable to connect to CONNECT 192.0.2.9:80",
            True,
        ),
        ("", b"HTTP/1.1 504 Gateway Timeout", ProxyRefused, "answered 504 Gateway Timeout", True),
        ("", b"HTTP/1.1 403 Forbidden", ProxyRefused, "answered 403 Forbidden to CONNECT", False),
        ("", b"\x05\x00", ProxyProtocolError, "is this an HTTP proxy?", None),
    ],
    ids=["407-no-credentials", "407-bad-password", "401", "500", "504", "403", "socks5"],
)
def test_http_refusals_name_the_proxy_and_the_status(
    url_auth: str,
    answer: bytes,
    error: type[OutboundError],
    message: str,
    target_fault: bool | None,
) -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await _read_head(reader)
        writer.write(answer + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = HttpConnectOutbound(f"http://{url_auth}{LOOPBACK}:{port}")
            with pytest.raises(error) as info:
                await outbound.open_tcp(Target(TEST_NET, 80))
            assert str(info.value).startswith(f"http proxy {LOOPBACK}:{port}")
            assert message in str(info.value)
            if target_fault is not None:
                assert isinstance(info.value, ProxyRefused)
                assert info.value.target_fault is target_fault

    run(scenario())


def test_http_silent_proxy_times_out() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = HttpConnectOutbound(f"http://{LOOPBACK}:{port}", connect_timeout=0.2)
            with pytest.raises(ProxyTimeout, match=r"no HTTP answer within 0.2s"):
                await outbound.open_tcp(Target(TEST_NET, 80))

    run(scenario())


def test_http_and_socks4_carry_no_udp() -> None:
    for url in ("http://127.0.0.1:3128", "socks4a://127.0.0.1:1080"):
        with pytest.raises(UdpNotSupported, match="carries no UDP"):
            run(make_outbound(url).open_udp(lambda _target, _payload: None))


def test_http_user_id_with_colon_fails_at_construction() -> None:
    from ztun.outbound import ProxyURL

    with pytest.raises(ValueError, match="RFC 7617"):
        HttpConnectOutbound(ProxyURL("http", LOOPBACK, 3128, "a:b", "p"))


# -- SOCKS4 / SOCKS4a ------------------------------------------------------------------------


def test_socks4a_connect_to_a_name_with_early_bytes() -> None:
    seen: list[bytes] = []

    async def handler(reader: Reader, writer: Writer) -> None:
        seen.append(await reader.readexactly(8))  # VN CD DSTPORT DSTIP
        seen.append(await reader.readuntil(b"\x00"))  # USERID NUL
        seen.append(await reader.readuntil(b"\x00"))  # the name, NUL
        writer.write(H("00 5a 0000 00000000") + b"banner")
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = make_outbound(f"socks4a://ident@{LOOPBACK}:{port}")
            assert isinstance(outbound, Socks4Outbound)
            stream = await outbound.open_tcp(Target("example.test", 22))
            stream.sock.close()
            assert stream.early == b"banner"

    run(scenario())
    assert seen == [H("04 01 0016 00000001"), b"ident\x00", b"example.test\x00"]


@pytest.mark.parametrize(
    ("code", "error", "message", "target_fault"),
    [
        (91, ProxyRefused, "refused CONNECT 192.0.2.9:80: request rejected or failed (91)", True),
        (92, ProxyAuthFailed, "cannot reach our identd (92)", None),
        (93, ProxyAuthFailed, "identd reports a different user id (93)", None),
        (0x7F, ProxyRefused, "unassigned reply 127", False),
    ],
)
def test_socks4_refusals(
    code: int, error: type[OutboundError], message: str, target_fault: bool | None
) -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await reader.readexactly(9)  # VN CD DSTPORT DSTIP, empty USERID's NUL
        writer.write(bytes((0, code)) + bytes(6))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            with pytest.raises(error) as info:
                await Socks4Outbound(f"socks4://{LOOPBACK}:{port}").open_tcp(Target(TEST_NET, 80))
            assert str(info.value).startswith(f"socks4 proxy {LOOPBACK}:{port} refused")
            assert message in str(info.value)
            if target_fault is not None:
                assert isinstance(info.value, ProxyRefused)
                assert info.value.target_fault is target_fault

    run(scenario())


@pytest.mark.parametrize("target", [Target("example.test", 80), Target("2001:db8::1", 80)])
def test_socks4_without_4a_never_asks_the_proxy_for_what_it_cannot_name(target: Target) -> None:
    with socket.socket() as placeholder:  # nothing listens: asking would fail differently
        placeholder.bind((LOOPBACK, 0))
        port = placeholder.getsockname()[1]
        with pytest.raises(TargetUnsupported, match="use socks4a://"):
            run(Socks4Outbound(f"socks4://{LOOPBACK}:{port}").open_tcp(target))


def test_refused_connect_to_the_proxy_is_marked_refused() -> None:
    with socket.socket() as placeholder:  # bound, not listening: connect gets a RST
        placeholder.bind((LOOPBACK, 0))
        port = placeholder.getsockname()[1]
        with pytest.raises(ProxyUnreachable) as info:
            run(HttpConnectOutbound(f"http://{LOOPBACK}:{port}").open_tcp(Target(TEST_NET, 80)))
        assert info.value.refused is True
        assert str(info.value).startswith(f"http proxy {LOOPBACK}:{port}: ")
