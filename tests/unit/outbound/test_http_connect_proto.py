"""The sans-IO HTTP CONNECT client: byte-exact requests, responses fed byte by byte."""

from __future__ import annotations

import base64
import re

import pytest
from core_feeding import feed_bytewise
from hypothesis import given
from hypothesis import strategies as st

from ztun.outbound.http_connect_proto import (
    MAX_HEAD,
    Event,
    HttpConnectClient,
    State,
    TunnelEstablished,
    TunnelRefused,
    authority,
    basic_credentials,
    encode_request,
)
from ztun.outbound.protocol import LocalProtocolError, RemoteProtocolError
from ztun.outbound.target import Target

V4 = Target("192.0.2.7", 443)
V6 = Target("2001:db8::1", 443)
NAME = Target("example.com", 8080)
OK = b"HTTP/1.1 200 Connection established\r\n\r\n"


# -- byte-exact requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (V4, "192.0.2.7:443"),
        (V6, "[2001:db8::1]:443"),  # RFC 3986 IP-literal
        (NAME, "example.com:8080"),
        (Target("bücher.de", 80), "xn--bcher-kva.de:80"),
    ],
)
def test_authority_form(target: Target, expected: str) -> None:
    assert authority(target) == expected


def test_request_without_credentials() -> None:
    client = HttpConnectClient(NAME)
    expected = b"CONNECT example.com:8080 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"
    assert client.data_to_send() == expected
    assert client.data_to_send() == b""  # the queue empties


def test_request_with_basic_credentials_rfc7617() -> None:
    # RFC 7617 section 2's own example: Aladdin / open sesame.
    assert basic_credentials("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    request = encode_request(V6, username="zé", password="p:w")
    token = base64.b64encode("zé:p:w".encode()).decode()
    assert request == (
        b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n"
        b"Proxy-Authorization: Basic " + token.encode() + b"\r\n\r\n"
    )


def test_user_id_with_colon_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="RFC 7617"):
        HttpConnectClient(V4, username="a:b", password="p")


# -- responses fed byte by byte --------------------------------------------------------------


def test_200_byte_by_byte() -> None:
    client = HttpConnectClient(V4)
    assert feed_bytewise(client, OK) == [TunnelEstablished(200, "Connection established")]
    assert client.state is State.ESTABLISHED
    assert client.trailing_data == b""


def test_fields_and_tunnel_bytes_after_the_head() -> None:
    """Content-Length in a 2xx to CONNECT is ignored (RFC 9110 9.3.6): what follows the
    blank line is the tunnel."""
    client = HttpConnectClient(V4)
    response = b"HTTP/1.0 200 OK\r\nProxy-agent: tinyproxy/1.11.1\r\nContent-Length: 5\r\n\r\n"
    assert client.receive_data(response + b"SSH-2.0-x\r\n") == [TunnelEstablished(200, "OK")]
    assert client.trailing_data == b"SSH-2.0-x\r\n"


def test_bare_lf_line_endings_are_accepted() -> None:
    """RFC 9112 section 2.2: a recipient may take a lone LF as a line terminator."""
    client = HttpConnectClient(V4)
    assert feed_bytewise(client, b"HTTP/1.1 200 OK\nVia: x\n\n") == [TunnelEstablished(200, "OK")]


def test_interim_responses_are_skipped() -> None:
    client = HttpConnectClient(V4)
    transcript = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK
    assert feed_bytewise(client, transcript) == [TunnelEstablished(200, "Connection established")]


def test_status_without_reason_phrase() -> None:
    assert HttpConnectClient(V4).receive_data(b"HTTP/1.1 204\r\n\r\n") == [
        TunnelEstablished(204, "")
    ]


@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    transcript = b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"early bytes"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(transcript) - 1))))
    chunks = [transcript[a:b] for a, b in zip([0, *cuts], [*cuts, len(transcript)], strict=True)]
    client = HttpConnectClient(V4)
    events: list[Event] = []
    while client.state is State.AWAIT_RESPONSE:  # as the adapter does: stop at the reply
        events += client.receive_data(chunks.pop(0))
    assert events == [TunnelEstablished(200, "Connection established")]
    assert client.trailing_data + b"".join(chunks) == b"early bytes"


@pytest.mark.parametrize(
    ("response", "event"),
    [
        (
            b'HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"'
            b"\r\nContent-Length: 3\r\n\r\nbody",
            TunnelRefused(407, "Proxy Authentication Required", 'Basic realm="x"'),
        ),
        (b"HTTP/1.0 500 Unable to connect\r\n\r\n", TunnelRefused(500, "Unable to connect")),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", TunnelRefused(403, "Forbidden")),
        # obs-fold (RFC 9112 section 5.2) is joined with one space
        (
            b"HTTP/1.1 407 Auth\r\nProxy-Authenticate: Basic\r\n realm=y\r\n\r\n",
            TunnelRefused(407, "Auth", "Basic realm=y"),
        ),
        # a repeated field is one comma-separated list (RFC 9110 section 5.3)
        (
            b"HTTP/1.1 407 A\r\nProxy-Authenticate: Negotiate\r\nproxy-authenticate: Basic\r\n\r\n",
            TunnelRefused(407, "A", "Negotiate, Basic"),
        ),
    ],
    ids=["407", "500", "403", "obs-fold", "repeated-field"],
)
def test_refusals_byte_by_byte(response: bytes, event: TunnelRefused) -> None:
    client = HttpConnectClient(V4)
    head_end = response.index(b"\r\n\r\n") + 4
    assert feed_bytewise(client, response[:head_end]) == [event]
    assert client.state is State.FAILED


# -- garbage and misuse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"\x05\x00\r\n\r\n", "is not HTTP/1.x (is this an HTTP proxy?)"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "is not HTTP/1.x"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "is not HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "has no name"),
    ],
)
def test_garbage_is_a_remote_error(response: bytes, message: str) -> None:
    client = HttpConnectClient(V4)
    with pytest.raises(RemoteProtocolError, match=re.escape(message)):
        client.receive_data(response)
    assert client.state is State.FAILED


def test_a_head_that_never_ends_is_bounded() -> None:
    client = HttpConnectClient(V4)
    client.receive_data(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(RemoteProtocolError, match=f"longer than {MAX_HEAD} bytes"):
        client.receive_data(b"X-Filler: " + b"a" * MAX_HEAD + b"\r\n")


def test_close_before_the_head_is_whole() -> None:
    client = HttpConnectClient(V4)
    client.receive_data(OK[:-2])
    with pytest.raises(RemoteProtocolError, match="closed the connection while awaiting"):
        client.receive_data(b"")


def test_feeding_after_the_handshake_is_a_local_error() -> None:
    client = HttpConnectClient(V4)
    client.receive_data(OK)
    with pytest.raises(LocalProtocolError, match="relay tunnel bytes directly"):
        client.receive_data(b"more")
    with pytest.raises(LocalProtocolError, match="no trailing data while awaiting"):
        _ = HttpConnectClient(V4).trailing_data
