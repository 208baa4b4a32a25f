"""SOCKS5 client protocol, sans-IO (after h11): bytes in, events and bytes out.

`Socks5Client` drives one handshake - greeting, optional RFC 1929 username/password
sub-negotiation, one request (CONNECT or UDP ASSOCIATE) and its reply - without touching
a socket. Its I/O adapter (`socks5.py`) writes `data_to_send()` and feeds whatever the
proxy sent to `receive_data()`, in chunks of any size down to one byte; `receive_data(b"")`
means the proxy closed the connection. Bytes the proxy sent after its reply belong to the
tunnel and are kept in `trailing_data`.

The UDP request header (RFC 1928 section 7) is encoded and decoded by plain functions,
and so are the server side's messages (greeting, RFC 1929 request, request; method
selection, auth status, reply), on the same address code: ztun.servers.socks5 runs on
them, so a message has one encoding in ztun whichever end sends it.

Remote garbage raises `RemoteProtocolError`; using the client out of order raises
`LocalProtocolError` (both from `protocol`, shared by every handshake core). A proxy saying
"no" (no acceptable method, bad password, a non-zero reply) is not garbage: it is an event.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from .protocol import ClientCore
from .protocol import LocalProtocolError as LocalProtocolError
from .protocol import RemoteProtocolError as RemoteProtocolError
from .target import MAX_DOMAIN_LEN, Target, encode_domain

SOCKS_VERSION = 0x05
#: RFC 1929 section 2: the sub-negotiation has its own version byte.
AUTH_VERSION = 0x01
AUTH_SUCCESS = 0x00
_RESERVED = 0x00
_PORT_LEN = 2
_IPV4_LEN = 4
_IPV6_LEN = 16
#: VER METHOD
_METHOD_REPLY_LEN = 2
#: VER STATUS
_AUTH_REPLY_LEN = 2
#: VER REP RSV ATYP, then the address
_REPLY_HEAD_LEN = 4
#: VER REP: enough to know a request failed
_REPLY_FAILURE_LEN = 2
#: RSV(2) FRAG ATYP, then the address
_UDP_HEAD_LEN = 4
_UDP_RESERVED = b"\x00\x00"


class Method(enum.IntEnum):
    """Authentication methods (RFC 1928 section 3)."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """Reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


REPLY_NAMES: dict[int, str] = {
    Reply.SUCCEEDED: "succeeded",
    Reply.GENERAL_FAILURE: "general SOCKS server failure",
    Reply.NOT_ALLOWED: "connection not allowed by ruleset",
    Reply.NETWORK_UNREACHABLE: "network unreachable",
    Reply.HOST_UNREACHABLE: "host unreachable",
    Reply.CONNECTION_REFUSED: "connection refused",
    Reply.TTL_EXPIRED: "TTL expired",
    Reply.COMMAND_NOT_SUPPORTED: "command not supported",
    Reply.ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}


def reply_name(code: int) -> str:
    """The RFC 1928 name of a reply code ("connection refused"), or "unassigned reply 0x..."."""
    return REPLY_NAMES.get(code, f"unassigned reply {code:#04x}")


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodSelected:
    """The proxy chose `method` among the ones we offered."""

    method: int


@dataclass(frozen=True, slots=True)
class NoAcceptableMethods:
    """The proxy accepts none of the offered methods (METHOD 0xFF); it will close."""


@dataclass(frozen=True, slots=True)
class AuthSucceeded:
    """RFC 1929 status 0: the username and password were accepted."""


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """RFC 1929 non-zero status; the proxy must close the connection after it."""

    status: int


@dataclass(frozen=True, slots=True)
class RequestSucceeded:
    """Reply 0x00. `bound` is BND.ADDR:BND.PORT: for UDP ASSOCIATE, the relay to send to."""

    bound: Target


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A non-zero reply code; `reason` is its RFC name."""

    reply_code: int

    @property
    def reason(self) -> str:
        return reply_name(self.reply_code)


Event = (
    MethodSelected
    | NoAcceptableMethods
    | AuthSucceeded
    | AuthFailed
    | RequestSucceeded
    | RequestFailed
)


# -- state machine (after h11's _state.py: the legal moves, in one table) -----------------


class State(enum.Enum):
    AWAIT_METHOD = "awaiting the method selection"
    AWAIT_AUTH = "awaiting the authentication status"
    AWAIT_REPLY = "awaiting the reply to the request"
    ESTABLISHED = "established"
    FAILED = "failed"


#: (state, what the proxy said) -> next state. A method selection is keyed by the method
#: because it decides whether a sub-negotiation follows.
_TRANSITIONS: dict[tuple[State, object], State] = {
    (State.AWAIT_METHOD, (MethodSelected, Method.NO_AUTH)): State.AWAIT_REPLY,
    (State.AWAIT_METHOD, (MethodSelected, Method.USERNAME_PASSWORD)): State.AWAIT_AUTH,
    (State.AWAIT_METHOD, NoAcceptableMethods): State.FAILED,
    (State.AWAIT_AUTH, AuthSucceeded): State.AWAIT_REPLY,
    (State.AWAIT_AUTH, AuthFailed): State.FAILED,
    (State.AWAIT_REPLY, RequestSucceeded): State.ESTABLISHED,
    (State.AWAIT_REPLY, RequestFailed): State.FAILED,
}


def _symbol(event: Event) -> object:
    if isinstance(event, MethodSelected):
        return (MethodSelected, event.method)
    return type(event)


class Socks5Client(ClientCore):
    """One client-side SOCKS5 handshake for `command` to `target`.

    The greeting is queued at construction: offer no-auth, plus username/password when
    credentials are given (as curl does). Each message is sent only after the previous
    answer, because some servers (microsocks) discard what arrives early - unless
    `pipeline` is set: then the request is queued right behind a no-auth-only greeting,
    one write and one round trip less, for a proxy known to read them apart
    (`Pipelining`). Never with credentials: the password would reach a server before it
    chose a method, and a server that wants none would take it for the request.
    """

    def __init__(
        self,
        command: Command,
        target: Target,
        *,
        username: str | None = None,
        password: str | None = None,
        pipeline: bool = False,
    ) -> None:
        self._request = encode_request(command, target)
        self._auth: bytes | None = None
        methods = [Method.NO_AUTH]
        if username is not None:
            if pipeline:
                raise LocalProtocolError("a request is pipelined behind a no-auth greeting only")
            self._auth = encode_auth(username, password or "")
            methods.append(Method.USERNAME_PASSWORD)
        self._offered = frozenset(methods)
        self.pipelined = pipeline
        greeting = encode_greeting(methods)
        super().__init__(greeting + self._request if pipeline else greeting)
        self.state = State.AWAIT_METHOD

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the proxy (b"" = it closed); return the events now complete."""
        self._accept(data)
        events: list[Event] = []
        try:
            while self.state not in (State.ESTABLISHED, State.FAILED):
                event = self._next_event()
                if event is None:
                    break
                self._apply(event)
                events.append(event)
        except RemoteProtocolError:
            self._fail()
            raise
        return events

    # -- internals ----------------------------------------------------------------------

    def _apply(self, event: Event) -> None:
        key = (self.state, _symbol(event))
        if key not in _TRANSITIONS:
            raise LocalProtocolError(f"no transition from {self.state.name} on {event!r}")
        self.state = _TRANSITIONS[key]
        # Entering a state that awaits an answer means sending the question first.
        if self.state is State.AWAIT_AUTH:
            assert self._auth is not None  # only offered with credentials
            self._out += self._auth
        elif self.state is State.AWAIT_REPLY and not self.pipelined:
            self._out += self._request

    def _next_event(self) -> Event | None:
        if self.state is State.AWAIT_METHOD:
            return self._parse_method()
        if self.state is State.AWAIT_AUTH:
            return self._parse_auth()
        return self._parse_reply()

    def _parse_method(self) -> Event | None:
        if len(self._buf) < _METHOD_REPLY_LEN:
            return None
        version, method = self._buf[0], self._buf[1]
        if version != SOCKS_VERSION:
            raise RemoteProtocolError(
                f"method selection has version {version:#04x}, not 0x05 (is this a SOCKS5 proxy?)"
            )
        del self._buf[:_METHOD_REPLY_LEN]
        if method == Method.NO_ACCEPTABLE:
            return NoAcceptableMethods()
        if method not in self._offered:
            raise RemoteProtocolError(f"proxy chose method {method:#04x}, which was not offered")
        return MethodSelected(method)

    def _parse_auth(self) -> Event | None:
        if len(self._buf) < _AUTH_REPLY_LEN:
            return None
        version, status = self._buf[0], self._buf[1]
        # Some servers answer the sub-negotiation with 0x05; the status byte is what counts.
        if version not in (AUTH_VERSION, SOCKS_VERSION):
            raise RemoteProtocolError(f"authentication reply has version {version:#04x}")
        del self._buf[:_AUTH_REPLY_LEN]
        return AuthSucceeded() if status == AUTH_SUCCESS else AuthFailed(status)

    def _parse_reply(self) -> Event | None:
        if len(self._buf) < _REPLY_FAILURE_LEN:
            return None
        version, code = self._buf[0], self._buf[1]
        if version != SOCKS_VERSION:
            raise RemoteProtocolError(f"reply has version {version:#04x}, not 0x05")
        if code != Reply.SUCCEEDED:
            # A failure is decided by VER REP alone: some servers send nothing after it,
            # others a zeroed or bogus address, and the connection closes either way.
            self._buf.clear()
            return RequestFailed(code)
        # RSV (byte 2) is ignored: RFC 1928 fixes it to 0, but nothing depends on it.
        parsed = parse_address(self._buf, _REPLY_HEAD_LEN - 1)
        if parsed is None:
            return None
        bound, end = parsed
        del self._buf[:end]
        return RequestSucceeded(bound)


# -- pipelining, learned per proxy ------------------------------------------------------


class PipelineState(enum.Enum):
    UNKNOWN = "not known yet"
    TRIAL = "on trial"
    ON = "on"
    OFF = "off"


class Pipelining:
    """Whether to send the CONNECT request together with the greeting to one proxy.

    RFC 1928 lets a client wait for each answer; sending both at once saves a write and a
    round trip per connection, but a server that reads the greeting with one recv() and
    drops the rest (microsocks) then waits for a request it already threw away. So it is
    learned, per proxy and sans-IO: nothing is pipelined until a handshake sent apart
    succeeded without credentials; then one handshake at a time is pipelined on trial. A
    reply to it - success or any reply code: the proxy parsed the request - turns
    pipelining on; a close or garbage instead turns it off for good, and the adapter
    redoes that handshake apart. No answer within the trial's bound is ambiguous (a
    dropped request, or a target slow to connect): the adapter redoes it apart and times
    that reply (`redo_answered`): prompt, the pipelined request was dropped (off); slow,
    the target was (another trial later). Once on, a handshake cut short from outside
    (the flow's own time limit) between the method selection and the reply counts as a
    failure: that is how a proxy that starts dropping early requests (another server now
    at that address) shows.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.state = PipelineState.UNKNOWN if enabled else PipelineState.OFF
        self._trial_running = False

    def begin(self, *, trial: bool = True) -> PipelineState:
        """How to send the next handshake: ON (pipelined), TRIAL (pipelined, on trial: bound
        it tightly and report how it ended) or OFF (apart). `trial=False`: never TRIAL
        (a health probe measures the proxy; a trial's bound and redo would be timed too)."""
        if self.state is PipelineState.ON:
            return PipelineState.ON
        if trial and self.state is PipelineState.TRIAL and not self._trial_running:
            self._trial_running = True
            return PipelineState.TRIAL
        return PipelineState.OFF

    def sent_apart_succeeded(self) -> None:
        """A handshake sent apart, offering no-auth only, got its reply."""
        if self.state is PipelineState.UNKNOWN:
            self.state = PipelineState.TRIAL

    def pipelined_answered(self) -> None:
        """The proxy replied to a pipelined request (whatever the reply code)."""
        self._trial_running = False
        if self.state is PipelineState.TRIAL:
            self.state = PipelineState.ON

    def pipelined_failed(self) -> bool:
        """A pipelined handshake ended without a reply: send apart from now on. True when
        this turned pipelining off (it was not yet): the one time to say so."""
        self._trial_running = False
        turned_off = self.state is not PipelineState.OFF
        self.state = PipelineState.OFF
        return turned_off

    def redo_answered(self, reply_delay: float, bound: float) -> bool:
        """A pipelined handshake got no answer within `bound`; redone apart, the answer it
        lacked (its reply, or its method selection when even that did not come) came
        `reply_delay` seconds after it was asked for. Sooner than `bound`: the proxy
        answers promptly, so it dropped what was pipelined - off (True when that turned it
        off). Later: the target (or the proxy itself) was slow, which says nothing about
        pipelining (a trial may run again; on stays on)."""
        if reply_delay < bound:
            return self.pipelined_failed()
        self.abandoned()
        return False

    def cut_short(self, *, greeting_answered: bool) -> bool:
        """A pipelined handshake was ended from outside (cancelled) before its reply.

        After the method selection and before the reply is where a dropped request leaves
        a handshake, and where a time limit outside the handshake's own ends it: a
        failure (True when that turned pipelining off). Before the method selection it
        says nothing about pipelining: abandoned.
        """
        if greeting_answered:
            return self.pipelined_failed()
        self.abandoned()
        return False

    def abandoned(self) -> None:
        """A pipelined handshake ended for a reason that says nothing about pipelining (the
        flow was closed, the proxy was unreachable): the next one may try again."""
        self._trial_running = False


# -- encoders -----------------------------------------------------------------------------


def encode_greeting(methods: Sequence[int]) -> bytes:
    """VER NMETHODS METHODS (RFC 1928 section 3)."""
    if not 1 <= len(methods) <= 0xFF:
        raise LocalProtocolError("a greeting offers 1 to 255 methods")
    return bytes([SOCKS_VERSION, len(methods), *methods])


def encode_auth(username: str, password: str) -> bytes:
    """VER ULEN UNAME PLEN PASSWD (RFC 1929 section 2), UTF-8.

    An empty password is sent as PLEN 0; servers that want one will say so.
    """
    uname, passwd = username.encode(), password.encode()
    if not 1 <= len(uname) <= 0xFF:
        raise LocalProtocolError("username must be 1 to 255 bytes (RFC 1929)")
    if len(passwd) > 0xFF:
        raise LocalProtocolError("password must be at most 255 bytes (RFC 1929)")
    return bytes([AUTH_VERSION, len(uname)]) + uname + bytes([len(passwd)]) + passwd


@functools.lru_cache(maxsize=4096)
def encode_address(target: Target) -> bytes:
    """ATYP DST.ADDR DST.PORT (RFC 1928 section 5); cached, as UDP sends it per datagram."""
    port = target.port.to_bytes(_PORT_LEN, "big")
    if target.ip is None:
        name = encode_domain(target.host)
        return bytes([AddressType.DOMAIN, len(name)]) + name + port
    atyp = AddressType.IPV4 if target.ip.version == 4 else AddressType.IPV6
    return bytes([atyp]) + target.ip.packed + port


def encode_request(command: Command, target: Target) -> bytes:
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 section 4)."""
    return bytes([SOCKS_VERSION, command, _RESERVED]) + encode_address(target)


@functools.lru_cache(maxsize=4096)
def encode_udp_header(target: Target) -> bytes:
    """RSV(2) FRAG(0) ATYP DST.ADDR DST.PORT, to prepend to a UDP payload (section 7).

    Cached: a flow sends every datagram to the same few targets, and this is per packet.
    """
    return _UDP_RESERVED + b"\x00" + encode_address(target)


# -- decoders -----------------------------------------------------------------------------


def parse_address(buf: bytes | bytearray | memoryview, offset: int) -> tuple[Target, int] | None:
    """Parse ATYP ADDR PORT at `offset`; return (target, end offset) or None if incomplete."""
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    start = offset + 1
    if atyp == AddressType.IPV4:
        end = start + _IPV4_LEN
    elif atyp == AddressType.IPV6:
        end = start + _IPV6_LEN
    elif atyp == AddressType.DOMAIN:
        if len(buf) <= start:
            return None
        name_len = buf[start]
        if name_len == 0:
            raise RemoteProtocolError("domain address of length 0")
        start += 1
        end = start + name_len
    else:
        raise RemoteProtocolError(f"unknown address type {atyp:#04x}")
    if len(buf) < end + _PORT_LEN:
        return None
    raw = bytes(buf[start:end])
    port = int.from_bytes(buf[end : end + _PORT_LEN], "big")
    if atyp == AddressType.DOMAIN:
        try:
            host = raw.decode("ascii")
            target = Target(host, port)
        except (UnicodeDecodeError, ValueError):
            raise RemoteProtocolError(f"invalid domain {raw[:MAX_DOMAIN_LEN]!r}") from None
    else:
        target = Target.from_ip(raw, port)
    return target, end + _PORT_LEN


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """A decoded UDP request header: the payload is `datagram[length:]`.

    Returning the header length instead of a payload copy lets the caller slice a
    memoryview when it wants zero-copy.
    """

    target: Target
    frag: int
    length: int


def decode_udp_header(datagram: bytes | bytearray | memoryview) -> UdpHeader:
    """Decode a relay datagram's header; RemoteProtocolError when it is short or garbage."""
    if len(datagram) < _UDP_HEAD_LEN:
        raise RemoteProtocolError(f"UDP datagram of {len(datagram)} bytes has no header")
    if bytes(datagram[:2]) != _UDP_RESERVED:
        raise RemoteProtocolError("UDP header reserved bytes are not zero")
    parsed = parse_address(datagram, _UDP_HEAD_LEN - 1)
    if parsed is None:
        raise RemoteProtocolError("UDP header truncated inside the address")
    target, end = parsed
    return UdpHeader(target=target, frag=datagram[2], length=end)


# -- server side --------------------------------------------------------------------------
#
# The messages a server reads and writes (ztun.servers.socks5 runs on them). Each decoder
# takes the bytes received so far and returns the message with the offset where it ends,
# or None while it is incomplete (read more, call again); garbage raises
# RemoteProtocolError. What follows the end offset belongs to the next message or, after
# the request, to the tunnel.

Buffer = bytes | bytearray | memoryview

#: RFC 1929 section 2: any non-zero status is a failure; 0x01 is what servers send.
AUTH_FAILURE = 0x01
#: VER NMETHODS
_GREETING_HEAD_LEN = 2
#: VER CMD RSV, then ATYP ADDR PORT
_REQUEST_HEAD_LEN = 3


def decode_greeting(buf: Buffer) -> tuple[frozenset[int], int] | None:
    """VER NMETHODS METHODS (RFC 1928 section 3) -> (the methods offered, end)."""
    if len(buf) < _GREETING_HEAD_LEN:
        return None
    version, count = buf[0], buf[1]
    if version != SOCKS_VERSION:
        raise RemoteProtocolError(f"greeting has version {version:#04x}, not 0x05")
    end = _GREETING_HEAD_LEN + count
    if len(buf) < end:
        return None
    return frozenset(buf[_GREETING_HEAD_LEN:end]), end


def encode_method_selection(method: int) -> bytes:
    """VER METHOD (RFC 1928 section 3); Method.NO_ACCEPTABLE refuses every offer."""
    return bytes((SOCKS_VERSION, method))


def decode_auth_request(buf: Buffer) -> tuple[str, str, int] | None:
    """VER ULEN UNAME PLEN PASSWD (RFC 1929 section 2) -> (username, password, end)."""
    if len(buf) < 2:
        return None
    if buf[0] != AUTH_VERSION:
        raise RemoteProtocolError(f"authentication request has version {buf[0]:#04x}")
    ulen = buf[1]
    plen_at = 2 + ulen
    if len(buf) <= plen_at:
        return None
    end = plen_at + 1 + buf[plen_at]
    if len(buf) < end:
        return None
    try:
        username = bytes(buf[2:plen_at]).decode()
        password = bytes(buf[plen_at + 1 : end]).decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("username or password is not UTF-8") from None
    return username, password, end


def encode_auth_status(accepted: bool) -> bytes:
    """VER STATUS (RFC 1929 section 2)."""
    return bytes((AUTH_VERSION, AUTH_SUCCESS if accepted else AUTH_FAILURE))


def decode_request(buf: Buffer) -> tuple[int, Target, int] | None:
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 section 4) -> (command, target, end).

    The command is returned as its code, known or not: answering an unknown one is the
    server's business (COMMAND_NOT_SUPPORTED), not the decoder's.
    """
    if len(buf) < _REQUEST_HEAD_LEN:
        return None
    if buf[0] != SOCKS_VERSION:
        raise RemoteProtocolError(f"request has version {buf[0]:#04x}, not 0x05")
    parsed = parse_address(buf, _REQUEST_HEAD_LEN)
    if parsed is None:
        return None
    target, end = parsed
    return buf[1], target, end


def encode_reply(code: int, bound: Target) -> bytes:
    """VER REP RSV BND.ADDR BND.PORT (RFC 1928 section 6); on failure, bound is 0.0.0.0:0."""
    return bytes((SOCKS_VERSION, code, _RESERVED)) + encode_address(bound)


#: Where a failure reply says it is bound: nowhere.
UNBOUND = Target("0.0.0.0", 0)
NO_ACCEPTABLE_METHODS = encode_method_selection(Method.NO_ACCEPTABLE)
