"""The sans-IO SOCKS5 codec: the client (byte-exact messages, replies fed byte by byte, UDP
headers) and the server side's messages, also in a whole handshake between the two."""

from __future__ import annotations

import pytest
from core_feeding import feed_bytewise
from hypothesis import given
from hypothesis import strategies as st

from ztun.outbound.socks5_proto import (
    NO_ACCEPTABLE_METHODS,
    UNBOUND,
    AuthFailed,
    AuthSucceeded,
    Command,
    Event,
    LocalProtocolError,
    Method,
    MethodSelected,
    NoAcceptableMethods,
    RemoteProtocolError,
    Reply,
    RequestFailed,
    RequestSucceeded,
    Socks5Client,
    State,
    decode_auth_request,
    decode_greeting,
    decode_request,
    decode_udp_header,
    encode_auth,
    encode_auth_status,
    encode_greeting,
    encode_method_selection,
    encode_reply,
    encode_request,
    encode_udp_header,
    reply_name,
)
from ztun.outbound.target import Target

H = bytes.fromhex

V4 = Target("192.0.2.7", 80)
V6 = Target("2001:db8::1", 443)
NAME = Target("example.com", 8080)

METHOD_NO_AUTH = H("0500")
METHOD_USERPASS = H("0502")
AUTH_OK = H("0100")
REPLY_OK_V4 = H("05 00 00 01 7f000001 1f90")  # bound 127.0.0.1:8080


# -- byte-exact encodings ---------------------------------------------------------------------


def test_greeting_without_credentials_offers_no_auth_only() -> None:
    assert encode_greeting([Method.NO_AUTH]) == H("050100")
    assert Socks5Client(Command.CONNECT, V4).data_to_send() == H("050100")


def test_greeting_with_credentials_offers_both_methods() -> None:
    client = Socks5Client(Command.CONNECT, V4, username="u", password="p")
    assert client.data_to_send() == H("05020002")


def test_auth_message_rfc1929() -> None:
    assert encode_auth("user", "pass") == H("01 04") + b"user" + H("04") + b"pass"


def test_auth_message_utf8_and_empty_password() -> None:
    assert encode_auth("zé", "") == H("01 03") + "zé".encode() + H("00")


@pytest.mark.parametrize(("username", "password"), [("", "p"), ("u" * 256, "p"), ("u", "p" * 256)])
def test_auth_message_rejects_out_of_range_lengths(username: str, password: str) -> None:
    with pytest.raises(LocalProtocolError, match="RFC 1929"):
        encode_auth(username, password)


@pytest.mark.parametrize(
    ("command", "target", "expected"),
    [
        (Command.CONNECT, V4, H("05 01 00 01 c0000207 0050")),
        (Command.CONNECT, V6, H("05 01 00 04 20010db8000000000000000000000001 01bb")),
        (Command.CONNECT, NAME, H("05 01 00 03 0b") + b"example.com" + H("1f90")),
        (
            Command.CONNECT,
            Target("bücher.de", 80),
            H("05 01 00 03 10") + b"xn--bcher-kva.de" + H("0050"),
        ),
        (Command.UDP_ASSOCIATE, Target("0.0.0.0", 0), H("05 03 00 01 00000000 0000")),
        (Command.UDP_ASSOCIATE, Target("::", 0), H("05 03 00 04") + bytes(16) + H("0000")),
    ],
    ids=["ipv4", "ipv6", "domain", "idna", "udp-v4-zeros", "udp-v6-zeros"],
)
def test_request_bytes(command: Command, target: Target, expected: bytes) -> None:
    assert encode_request(command, target) == expected


def test_domain_of_255_bytes_fits() -> None:
    name = ".".join(["a" * 63] * 4)[:255]
    assert encode_request(Command.CONNECT, Target(name, 1))[4] == 255


# -- handshakes fed byte by byte --------------------------------------------------------------


def test_no_auth_connect_byte_by_byte() -> None:
    client = Socks5Client(Command.CONNECT, V4)
    assert client.data_to_send() == H("050100")
    assert client.data_to_send() == b""  # the queue empties
    assert feed_bytewise(client, METHOD_NO_AUTH) == [MethodSelected(Method.NO_AUTH)]
    assert client.state is State.AWAIT_REPLY
    assert client.data_to_send() == encode_request(Command.CONNECT, V4)
    assert feed_bytewise(client, REPLY_OK_V4) == [RequestSucceeded(Target("127.0.0.1", 8080))]
    assert client.state.name == "ESTABLISHED"  # (mypy narrows `state` after the check above)
    assert client.trailing_data == b""
    assert client.data_to_send() == b""


def test_username_password_connect_byte_by_byte() -> None:
    client = Socks5Client(Command.CONNECT, NAME, username="user", password="pass")
    client.data_to_send()
    assert feed_bytewise(client, METHOD_USERPASS) == [MethodSelected(Method.USERNAME_PASSWORD)]
    assert client.data_to_send() == encode_auth("user", "pass")  # not the request yet
    assert feed_bytewise(client, AUTH_OK) == [AuthSucceeded()]
    assert client.data_to_send() == encode_request(Command.CONNECT, NAME)
    assert feed_bytewise(client, REPLY_OK_V4) == [RequestSucceeded(Target("127.0.0.1", 8080))]


def test_server_may_choose_no_auth_although_we_offer_credentials() -> None:
    client = Socks5Client(Command.CONNECT, V4, username="u", password="p")
    client.data_to_send()
    assert client.receive_data(METHOD_NO_AUTH) == [MethodSelected(Method.NO_AUTH)]
    assert client.data_to_send() == encode_request(Command.CONNECT, V4)


def test_auth_reply_with_version_5_is_accepted() -> None:
    """Some servers answer the RFC 1929 sub-negotiation with VER 0x05."""
    client = Socks5Client(Command.CONNECT, V4, username="u", password="p")
    client.receive_data(METHOD_USERPASS)
    assert client.receive_data(H("0500")) == [AuthSucceeded()]


@pytest.mark.parametrize(
    ("reply", "bound"),
    [
        (H("05 00 00 01 0a000001 0438"), Target("10.0.0.1", 1080)),
        (H("05 00 00 04") + bytes(15) + H("01 c350"), Target("::1", 50000)),
        (H("05 00 00 03 09") + b"relay.lan" + H("0035"), Target("relay.lan", 53)),
        (H("05 00 00 01 00000000 0000"), Target("0.0.0.0", 0)),
    ],
    ids=["ipv4", "ipv6", "domain", "zeros"],
)
def test_reply_bound_address_parsed_byte_by_byte(reply: bytes, bound: Target) -> None:
    client = Socks5Client(Command.UDP_ASSOCIATE, Target("0.0.0.0", 0))
    client.receive_data(METHOD_NO_AUTH)
    assert feed_bytewise(client, reply) == [RequestSucceeded(bound)]


def test_whole_transcript_in_one_chunk() -> None:
    client = Socks5Client(Command.CONNECT, V6, username="u", password="p")
    client.data_to_send()
    events = client.receive_data(METHOD_USERPASS + AUTH_OK + REPLY_OK_V4 + b"tunnel")
    assert events == [
        MethodSelected(Method.USERNAME_PASSWORD),
        AuthSucceeded(),
        RequestSucceeded(Target("127.0.0.1", 8080)),
    ]
    assert client.data_to_send() == encode_auth("u", "p") + encode_request(Command.CONNECT, V6)
    assert client.trailing_data == b"tunnel"


@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    transcript = METHOD_USERPASS + AUTH_OK + REPLY_OK_V4 + b"early bytes"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(transcript) - 1))))
    client = Socks5Client(Command.CONNECT, V4, username="u", password="p")
    chunks = [transcript[a:b] for a, b in zip([0, *cuts], [*cuts, len(transcript)], strict=True)]
    events: list[Event] = []
    while client.state is not State.ESTABLISHED:  # as the adapter does: stop at the reply
        events += client.receive_data(chunks.pop(0))
    assert events == [
        MethodSelected(Method.USERNAME_PASSWORD),
        AuthSucceeded(),
        RequestSucceeded(Target("127.0.0.1", 8080)),
    ]
    assert client.trailing_data + b"".join(chunks) == b"early bytes"


def test_server_speaking_first_after_reply_lands_in_trailing_data() -> None:
    client = Socks5Client(Command.CONNECT, V4)
    client.receive_data(METHOD_NO_AUTH)
    client.receive_data(REPLY_OK_V4[:-1])
    client.receive_data(REPLY_OK_V4[-1:] + b"SSH-2.0-OpenSSH\r\n")
    assert client.trailing_data == b"SSH-2.0-OpenSSH\r\n"


# -- the proxy saying no ----------------------------------------------------------------------


def test_no_acceptable_methods() -> None:
    client = Socks5Client(Command.CONNECT, V4)
    assert feed_bytewise(client, H("05ff")) == [NoAcceptableMethods()]
    assert client.state is State.FAILED
    assert client.data_to_send() == H("050100")  # only the greeting was ever queued
    assert client.data_to_send() == b""


def test_auth_failure() -> None:
    client = Socks5Client(Command.CONNECT, V4, username="u", password="bad")
    client.receive_data(METHOD_USERPASS)
    assert feed_bytewise(client, H("0101")) == [AuthFailed(1)]
    assert client.state is State.FAILED
    assert client.data_to_send() == H("05020002") + encode_auth("u", "bad")  # no request


@pytest.mark.parametrize("code", [c.value for c in Reply if c != Reply.SUCCEEDED])
def test_failure_reply_is_decided_by_ver_rep(code: int) -> None:
    """A failure needs only VER REP: servers vary in what (if anything) follows."""
    client = Socks5Client(Command.CONNECT, V4)
    client.receive_data(METHOD_NO_AUTH)
    assert client.receive_data(H("05")) == []
    assert client.receive_data(bytes([code])) == [RequestFailed(code)]
    assert client.state is State.FAILED


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "succeeded"),
        (1, "general SOCKS server failure"),
        (2, "connection not allowed by ruleset"),
        (3, "network unreachable"),
        (4, "host unreachable"),
        (5, "connection refused"),
        (6, "TTL expired"),
        (7, "command not supported"),
        (8, "address type not supported"),
        (9, "unassigned reply 0x09"),
    ],
)
def test_reply_names(code: int, name: str) -> None:
    assert reply_name(code) == name
    assert RequestFailed(code).reason == name


# -- remote garbage and local misuse -----------------------------------------------------------


def _after_method() -> Socks5Client:
    client = Socks5Client(Command.CONNECT, V4)
    client.receive_data(METHOD_NO_AUTH)
    return client


@pytest.mark.parametrize(
    ("setup", "garbage", "match"),
    [
        (lambda: Socks5Client(Command.CONNECT, V4), b"HTTP/1.1 400 Bad", "version 0x48"),
        (lambda: Socks5Client(Command.CONNECT, V4), H("0402"), "version 0x04"),
        (lambda: Socks5Client(Command.CONNECT, V4), H("0502"), "not offered"),
        (lambda: Socks5Client(Command.CONNECT, V4), H("0501"), "not offered"),
        (_after_method, H("04 00 00 01"), "reply has version"),
        (_after_method, H("05 00 00 02 00"), "unknown address type 0x02"),
        (_after_method, H("05 00 00 03 00 0050"), "length 0"),
        (_after_method, H("05 00 00 03 02 ff fe 0050"), "invalid domain"),
    ],
    ids=[
        "http",
        "socks4",
        "userpass-not-offered",
        "gssapi",
        "reply-version",
        "atyp",
        "empty-domain",
        "non-ascii-domain",
    ],
)
def test_remote_garbage_raises(setup: object, garbage: bytes, match: str) -> None:
    client = setup()  # type: ignore[operator]
    with pytest.raises(RemoteProtocolError, match=match):
        client.receive_data(garbage)
    assert client.state is State.FAILED


def test_garbage_detected_when_fed_byte_by_byte() -> None:
    client = _after_method()
    client.receive_data(H("05"))
    client.receive_data(H("00"))
    client.receive_data(H("00"))
    with pytest.raises(RemoteProtocolError, match="unknown address type"):
        client.receive_data(H("07"))


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        (b"", "awaiting the method selection"),
        (H("05"), "awaiting the method selection"),
        (METHOD_NO_AUTH + H("05 00 00 01 7f"), "awaiting the reply"),
    ],
)
def test_eof_mid_handshake_is_a_remote_error(prefix: bytes, match: str) -> None:
    client = Socks5Client(Command.CONNECT, V4)
    if prefix:
        client.receive_data(prefix)
    with pytest.raises(RemoteProtocolError, match=f"closed the connection while {match}"):
        client.receive_data(b"")


def test_feeding_after_established_is_a_local_error() -> None:
    client = _after_method()
    client.receive_data(REPLY_OK_V4)
    with pytest.raises(LocalProtocolError, match="relay tunnel bytes directly"):
        client.receive_data(b"more")


def test_feeding_after_failure_is_a_local_error() -> None:
    client = Socks5Client(Command.CONNECT, V4)
    client.receive_data(H("05ff"))
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"x")


def test_trailing_data_before_established_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="no trailing data"):
        _ = Socks5Client(Command.CONNECT, V4).trailing_data


# -- UDP request header (RFC 1928 section 7) ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "header"),
    [
        (V4, H("0000 00 01 c0000207 0050")),
        (V6, H("0000 00 04 20010db8000000000000000000000001 01bb")),
        (NAME, H("0000 00 03 0b") + b"example.com" + H("1f90")),
    ],
    ids=["ipv4", "ipv6", "domain"],
)
def test_udp_header_bytes(target: Target, header: bytes) -> None:
    assert encode_udp_header(target) == header
    decoded = decode_udp_header(header + b"payload")
    assert (decoded.target, decoded.frag, decoded.length) == (target, 0, len(header))


def test_udp_header_reports_fragment_number() -> None:
    assert decode_udp_header(H("0000 05 01 7f000001 0035") + b"x").frag == 5


def test_udp_header_decodes_from_memoryview() -> None:
    datagram = memoryview(bytearray(encode_udp_header(V6) + b"data"))
    header = decode_udp_header(datagram)
    assert bytes(datagram[header.length :]) == b"data"


@pytest.mark.parametrize(
    ("datagram", "match"),
    [
        (b"", "no header"),
        (H("000000"), "no header"),
        (H("0001 00 01 7f000001 0035"), "reserved"),
        (H("0000 00 01 7f0000"), "truncated"),
        (H("0000 00 09 7f000001 0035"), "unknown address type"),
        (H("0000 00 03 05 6162"), "truncated"),
    ],
)
def test_udp_header_garbage(datagram: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_udp_header(datagram)


_labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_domains = (
    st.lists(_labels, min_size=1, max_size=6)
    .map(".".join)
    .filter(lambda name: not name.replace(".", "").isdigit())
)
targets = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    _domains,
).flatmap(lambda host: st.builds(Target, st.just(host), st.integers(0, 65535)))


@given(targets, st.binary(max_size=512))
def test_udp_header_round_trip(target: Target, payload: bytes) -> None:
    datagram = encode_udp_header(target) + payload
    header = decode_udp_header(datagram)
    assert header.target == target
    assert header.frag == 0
    assert datagram[header.length :] == payload


@given(st.binary(max_size=300))
def test_udp_header_decoder_never_raises_anything_else(datagram: bytes) -> None:
    try:
        header = decode_udp_header(datagram)
    except RemoteProtocolError:
        return
    assert header.length <= len(datagram)


@given(st.binary(max_size=64))
def test_client_never_raises_anything_but_remote_errors_on_garbage(reply: bytes) -> None:
    client = Socks5Client(Command.CONNECT, V4, username="u", password="p")
    try:
        for i in range(len(reply)):
            if client.state in (State.ESTABLISHED, State.FAILED):
                break
            client.receive_data(reply[i : i + 1])
    except RemoteProtocolError:
        assert client.state is State.FAILED


# -- server side: bytes in, bytes out, and against the client core ---------------------


def test_greeting_waits_for_every_method_then_ends_where_it_ends() -> None:
    data = H("05 02 00 02") + b"next"
    for cut in range(4):
        assert decode_greeting(data[:cut]) is None
    assert decode_greeting(data) == (frozenset({0, 2}), 4)
    with pytest.raises(RemoteProtocolError, match="version 0x04"):
        decode_greeting(H("04 01 00"))


def test_method_selection_and_refusal_bytes() -> None:
    assert encode_method_selection(Method.USERNAME_PASSWORD) == H("0502")
    assert H("05ff") == NO_ACCEPTABLE_METHODS


def test_auth_request_is_read_whole_utf8_and_checked() -> None:
    data = H("01 05") + b"alice" + H("03") + b"p\xc3\xa9" + b"\x05"
    for cut in range(len(data) - 1):
        assert decode_auth_request(data[:cut]) is None, cut
    assert decode_auth_request(data) == ("alice", "pé", len(data) - 1)
    assert decode_auth_request(H("01 01 61 00")) == ("a", "", 4)  # empty password
    with pytest.raises(RemoteProtocolError, match="version 0x05"):
        decode_auth_request(H("05 01 61 00"))
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        decode_auth_request(H("01 01 ff 00"))
    assert encode_auth_status(True) == H("0100")
    assert encode_auth_status(False) == H("0101")


@pytest.mark.parametrize(
    ("wire", "command", "target"),
    [
        (H("05 01 00 01 c0000207 0050"), Command.CONNECT, Target("192.0.2.7", 80)),
        (
            H("05 03 00 04 20010db8000000000000000000000001 01bb"),
            Command.UDP_ASSOCIATE,
            Target("2001:db8::1", 443),
        ),
        (
            H("05 01 00 03 0b") + b"example.com" + H("1f90"),
            Command.CONNECT,
            Target("example.com", 8080),
        ),
    ],
)
def test_requests_decode_byte_by_byte(wire: bytes, command: int, target: Target) -> None:
    for cut in range(len(wire)):
        assert decode_request(wire[:cut]) is None, cut
    assert decode_request(wire + b"tunnel") == (command, target, len(wire))


def test_request_garbage_and_unknown_commands() -> None:
    with pytest.raises(RemoteProtocolError, match="version 0x04"):
        decode_request(H("04 01 00 01 c0000207 0050"))
    with pytest.raises(RemoteProtocolError, match="address type 0x02"):
        decode_request(H("05 01 00 02 00"))
    assert decode_request(H("05 2a 00 01 c0000207 0050")) == (0x2A, Target("192.0.2.7", 80), 10)


def test_replies_are_byte_exact() -> None:
    assert encode_reply(Reply.SUCCEEDED, Target("10.0.0.2", 40000)) == H(
        "05 00 00 01 0a000002 9c40"
    )
    assert encode_reply(Reply.CONNECTION_REFUSED, UNBOUND) == H("05 05 00 01 00000000 0000")


def test_a_whole_handshake_between_the_two_cores() -> None:
    """Client bytes decoded by the server side; server bytes become the client's events."""
    target = Target("example.com", 443)
    client = Socks5Client(Command.CONNECT, target, username="bob", password="pw")
    methods, _ = decode_greeting(client.data_to_send()) or ((), 0)
    assert methods == {Method.NO_AUTH, Method.USERNAME_PASSWORD}
    assert client.receive_data(encode_method_selection(Method.USERNAME_PASSWORD)) == [
        MethodSelected(Method.USERNAME_PASSWORD)
    ]
    assert decode_auth_request(client.data_to_send()) == ("bob", "pw", 8)
    assert client.receive_data(encode_auth_status(True)) == [AuthSucceeded()]
    assert decode_request(client.data_to_send()) == (Command.CONNECT, target, 18)
    bound = Target("2001:db8::2", 5000)
    assert client.receive_data(encode_reply(Reply.SUCCEEDED, bound) + b"hi") == [
        RequestSucceeded(bound)
    ]
    assert client.state is State.ESTABLISHED and client.trailing_data == b"hi"

    refused = Socks5Client(Command.CONNECT, target)
    refused.receive_data(encode_method_selection(Method.NO_AUTH))
    assert refused.receive_data(encode_reply(Reply.CONNECTION_REFUSED, UNBOUND)) == [
        RequestFailed(Reply.CONNECTION_REFUSED)
    ]
