"""The sans-IO SOCKS4/SOCKS4a client: byte-exact requests, replies fed byte by byte."""

from __future__ import annotations

import ipaddress

import pytest
from core_feeding import feed_bytewise
from hypothesis import given
from hypothesis import strategies as st

from ztun.outbound.protocol import LocalProtocolError, RemoteProtocolError
from ztun.outbound.socks4_proto import (
    Event,
    Granted,
    Reply,
    RequestRejected,
    Socks4Client,
    State,
    encode_request,
    reply_name,
)
from ztun.outbound.target import Target

H = bytes.fromhex

V4 = Target("192.0.2.7", 80)
V6 = Target("2001:db8::1", 443)
NAME = Target("example.com", 8080)
SNIFFED = Target("example.com", 8080, seen_ip=ipaddress.IPv4Address("192.0.2.7"))
#: VN=0 CD=90 DSTPORT DSTIP (8 bytes): the grant danted and OpenSSH send.
GRANTED = H("00 5a 0000 00000000")


# -- byte-exact requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "user_id", "socks4a", "expected"),
    [
        # VN CD DSTPORT DSTIP USERID NUL
        (V4, "", False, H("04 01 0050 c0000207 00")),
        (V4, "ident", False, H("04 01 0050 c0000207") + b"ident" + H("00")),
        # 4a with an IPv4 target: plain SOCKS4 (no name to send)
        (V4, "", True, H("04 01 0050 c0000207 00")),
        # 4a: DSTIP 0.0.0.1, USERID NUL, then the name NUL
        (NAME, "", True, H("04 01 1f90 00000001 00") + b"example.com" + H("00")),
        (NAME, "u", True, H("04 01 1f90 00000001") + b"u\x00example.com\x00"),
        (Target("bücher.de", 80), "", True, H("04 01 0050 00000001 00") + b"xn--bcher-kva.de\x00"),
        # 4a and IPv6: the literal is the name, for the proxy's resolver to parse
        (V6, "", True, H("04 01 01bb 00000001 00") + b"2001:db8::1\x00"),
        # a sniffed name: plain SOCKS4 sends the address the app connected to, 4a the name
        (SNIFFED, "", False, H("04 01 1f90 c0000207 00")),
        (SNIFFED, "", True, H("04 01 1f90 00000001 00") + b"example.com" + H("00")),
    ],
    ids=[
        "v4",
        "v4-userid",
        "4a-v4",
        "4a-name",
        "4a-name-userid",
        "4a-idna",
        "4a-v6",
        "sniffed",
        "4a-sniffed",
    ],
)
def test_request_bytes(target: Target, user_id: str, socks4a: bool, expected: bytes) -> None:
    assert encode_request(target, user_id=user_id, socks4a=socks4a) == expected
    client = Socks4Client(target, user_id=user_id, socks4a=socks4a)
    assert client.data_to_send() == expected
    assert client.data_to_send() == b""  # the queue empties


@pytest.mark.parametrize(
    ("target", "message"),
    [(NAME, "socks4:// cannot carry a name"), (V6, "socks4:// cannot carry an IPv6 address")],
)
def test_plain_socks4_refuses_what_it_cannot_name(target: Target, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message + r".*use socks4a://"):
        Socks4Client(target)


def test_user_id_with_nul_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="NUL"):
        encode_request(V4, user_id="a\x00b")


# -- replies fed byte by byte ----------------------------------------------------------------


def test_grant_byte_by_byte_then_tunnel_bytes() -> None:
    client = Socks4Client(NAME, socks4a=True)
    assert feed_bytewise(client, H("00 5a 1f90 0a000001")) == [Granted(Target("10.0.0.1", 8080))]
    assert client.state is State.ESTABLISHED
    assert client.trailing_data == b""


def test_server_speaking_first_lands_in_trailing_data() -> None:
    client = Socks4Client(V4)
    assert client.receive_data(GRANTED + b"SSH-2.0-OpenSSH\r\n") == [Granted(Target("0.0.0.0", 0))]
    assert client.trailing_data == b"SSH-2.0-OpenSSH\r\n"


def test_reply_version_4_is_accepted() -> None:
    """The protocol says VN=0 in replies; some servers echo 4."""
    assert Socks4Client(V4).receive_data(H("04 5a 0000 00000000")) == [
        Granted(Target("0.0.0.0", 0))
    ]


@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    transcript = GRANTED + b"early bytes"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(transcript) - 1))))
    chunks = [transcript[a:b] for a, b in zip([0, *cuts], [*cuts, len(transcript)], strict=True)]
    client = Socks4Client(V4)
    events: list[Event] = []
    while client.state is State.AWAIT_REPLY:  # as the adapter does: stop at the reply
        events += client.receive_data(chunks.pop(0))
    assert events == [Granted(Target("0.0.0.0", 0))]
    assert client.trailing_data + b"".join(chunks) == b"early bytes"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (Reply.REJECTED, "request rejected or failed"),
        (Reply.IDENTD_UNREACHABLE, "cannot reach our identd"),
        (Reply.IDENTD_MISMATCH, "identd reports a different user id"),
        (0x7F, "unassigned reply 127 (0x7f)"),
    ],
)
def test_refusals_are_events_with_names(code: int, reason: str) -> None:
    client = Socks4Client(V4)
    reply = bytes((0, code)) + bytes(6)
    events = feed_bytewise(client, reply)
    assert events == [RequestRejected(code)]
    assert reason in events[0].reason and reason in reply_name(code)
    assert client.state is State.FAILED


# -- garbage and misuse ----------------------------------------------------------------------


def test_socks5_answer_is_garbage() -> None:
    client = Socks4Client(V4)
    with pytest.raises(RemoteProtocolError, match=r"version 0x05.*is this a SOCKS4 proxy"):
        client.receive_data(H("05 00 00 01 00000000 0000"))
    assert client.state is State.FAILED


def test_close_before_the_reply_is_whole() -> None:
    client = Socks4Client(V4)
    client.receive_data(GRANTED[:5])
    with pytest.raises(RemoteProtocolError, match="closed the connection while awaiting"):
        client.receive_data(b"")


def test_feeding_after_the_handshake_is_a_local_error() -> None:
    client = Socks4Client(V4)
    client.receive_data(GRANTED)
    with pytest.raises(LocalProtocolError, match="relay tunnel bytes directly"):
        client.receive_data(b"more")


def test_trailing_data_before_the_grant_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="no trailing data while awaiting"):
        _ = Socks4Client(V4).trailing_data
