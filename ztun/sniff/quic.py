"""QUIC Initial SNI: decrypt the client's Initial packets (RFC 9001 5.2) and read the
ClientHello from their CRYPTO frames.

Initial keys are derived from the client's Destination Connection ID and a salt that is
public per version, so any observer can read Initials -- that is what this does, for QUIC
version 1 (RFC 9000) and version 2 (RFC 9369).  HKDF is plain HMAC-SHA256 (stdlib);
header protection (AES-128-ECB) and payload decryption (AES-128-GCM) need the optional
``cryptography`` package.  Without it every QUIC flow is ``Verdict.UNKNOWN`` ("QUIC, name
unknown"): routing still works, on the destination address.

A ClientHello with large post-quantum key shares spans two Initial packets (Chrome does
this), so :class:`QuicSniffer` keeps CRYPTO data across datagrams, bounded in datagrams
and bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ztun.sniff.result import MAX_TLS_BYTES, Sniffed, SniffResult, Verdict
from ztun.sniff.tls import HANDSHAKE_CLIENT_HELLO, HANDSHAKE_HEADER, server_name_from_hello

try:  # optional: pip install 'cryptography' (the ``quic`` extra)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    QUIC_DECRYPT_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by monkeypatching the flag
    QUIC_DECRYPT_AVAILABLE = False


@dataclass(frozen=True, slots=True)
class _Version:
    salt: bytes
    label_prefix: str
    initial_type: int  # the long-header packet type bits that mean "Initial"


QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
_VERSIONS = {
    QUIC_V1: _Version(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), "quic", 0),
    QUIC_V2: _Version(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), "quicv2", 1),
}
LONG_HEADER = 0x80
MAX_CID = 20
SAMPLE_LEN = 16
PN_SAMPLE_OFFSET = 4  # the sample starts 4 bytes after the packet number's first byte
AEAD_TAG = 16
MAX_DATAGRAMS = 4  # Initials to wait for before giving up on a split ClientHello
# Frame types allowed in a client Initial (RFC 9000 12.4, Table 3).
FRAME_PADDING, FRAME_PING, FRAME_ACK, FRAME_ACK_ECN = 0x00, 0x01, 0x02, 0x03
FRAME_CRYPTO, FRAME_CLOSE = 0x06, 0x1C


class _Bad(Exception):
    """Not a readable client Initial."""


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret: bytes, label: str, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 7.1) with an empty context, SHA-256."""
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def client_initial_keys(dcid: bytes, version: int = QUIC_V1) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting the client's Initial packets (RFC 9001 5.2, A.1)."""
    v = _VERSIONS[version]
    initial = _hkdf_extract(v.salt, dcid)
    client = hkdf_expand_label(initial, "client in", 32)
    return (
        hkdf_expand_label(client, f"{v.label_prefix} key", 16),
        hkdf_expand_label(client, f"{v.label_prefix} iv", 12),
        hkdf_expand_label(client, f"{v.label_prefix} hp", 16),
    )


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """RFC 9000 16: (value, next position)."""
    if pos >= len(buf):
        raise _Bad("truncated varint")
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        raise _Bad("truncated varint")
    value = first & 0x3F
    for b in buf[pos + 1 : pos + size]:
        value = (value << 8) | b
    return value, pos + size


@dataclass(frozen=True, slots=True)
class _Initial:
    version: int
    dcid: bytes
    pn_offset: int
    end: int  # end of this packet inside the datagram (coalesced packets follow)


def _parse_long_header(dgram: memoryview, start: int) -> _Initial:
    """The long-header packet at ``start``; ``pn_offset`` is -1 unless it is an Initial
    (0-RTT and Handshake packets may be coalesced after it, and are skipped)."""
    b0 = dgram[start]
    if not b0 & LONG_HEADER:
        raise _Bad("short header")
    if len(dgram) - start < 7:
        raise _Bad("truncated long header")
    version = int.from_bytes(dgram[start + 1 : start + 5], "big")
    if version not in _VERSIONS:
        raise _Bad(f"version {version:#x}")
    pos = start + 5
    dcid_len = dgram[pos]
    if dcid_len > MAX_CID:
        raise _Bad("connection id too long")
    dcid = bytes(dgram[pos + 1 : pos + 1 + dcid_len])
    pos += 1 + dcid_len
    if pos >= len(dgram):
        raise _Bad("truncated")
    scid_len = dgram[pos]
    if scid_len > MAX_CID:
        raise _Bad("connection id too long")
    pos += 1 + scid_len
    ptype = (b0 >> 4) & 0x03
    is_initial = ptype == _VERSIONS[version].initial_type
    if is_initial:
        token_len, pos = _varint(dgram, pos)
        pos += token_len
    length, pos = _varint(dgram, pos)
    end = pos + length
    if end > len(dgram):
        raise _Bad("packet longer than the datagram")
    if not is_initial:
        return _Initial(version, dcid, -1, end)
    return _Initial(version, dcid, pos, end)


def _decrypt(dgram: memoryview, pkt: _Initial, start: int) -> bytes:
    """The plaintext payload of one Initial (RFC 9001 5.3, 5.4)."""
    key, iv, hp = client_initial_keys(pkt.dcid, pkt.version)
    sample_at = pkt.pn_offset + PN_SAMPLE_OFFSET
    if sample_at + SAMPLE_LEN > pkt.end:
        raise _Bad("too short to sample")
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = encryptor.update(bytes(dgram[sample_at : sample_at + SAMPLE_LEN]))
    header = bytearray(dgram[start : pkt.pn_offset + 4])
    header[0] ^= mask[0] & 0x0F  # long header: the low 4 bits are protected
    pn_len = (header[0] & 0x03) + 1
    pn_at = pkt.pn_offset - start
    for i in range(pn_len):
        header[pn_at + i] ^= mask[1 + i]
    header = header[: pn_at + pn_len]
    packet_number = int.from_bytes(header[pn_at:], "big")
    nonce = bytes(a ^ b for a, b in zip(iv, packet_number.to_bytes(12, "big"), strict=True))
    ciphertext = bytes(dgram[pkt.pn_offset + pn_len : pkt.end])
    if len(ciphertext) < AEAD_TAG:
        raise _Bad("no room for the AEAD tag")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, bytes(header))
    except Exception as exc:  # cryptography's InvalidTag: not a client Initial for this DCID
        raise _Bad("authentication failed") from exc


def _crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of every CRYPTO frame in an Initial's payload."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(payload):
        ftype, pos = _varint(payload, pos)
        if ftype in (FRAME_PADDING, FRAME_PING):
            continue
        if ftype in (FRAME_ACK, FRAME_ACK_ECN):
            _, pos = _varint(payload, pos)  # largest acknowledged
            _, pos = _varint(payload, pos)  # ack delay
            count, pos = _varint(payload, pos)
            _, pos = _varint(payload, pos)  # first range
            for _ in range(2 * count + (3 if ftype == FRAME_ACK_ECN else 0)):
                _, pos = _varint(payload, pos)
        elif ftype == FRAME_CRYPTO:
            offset, pos = _varint(payload, pos)
            length, pos = _varint(payload, pos)
            if pos + length > len(payload):
                raise _Bad("CRYPTO frame past the payload")
            out.append((offset, payload[pos : pos + length]))
            pos += length
        elif ftype == FRAME_CLOSE:
            break
        else:
            raise _Bad(f"frame type {ftype:#x} not allowed in an Initial")
    return out


class QuicSniffer:
    """Feed a UDP flow's first datagrams; get the ClientHello's SNI once it is whole."""

    __slots__ = ("_crypto", "_datagrams", "_limit", "_max_datagrams")

    def __init__(self, *, max_datagrams: int = MAX_DATAGRAMS, limit: int = MAX_TLS_BYTES) -> None:
        self._crypto: dict[int, bytes] = {}
        self._datagrams = 0
        self._max_datagrams = max_datagrams
        self._limit = limit

    def feed(self, datagram: bytes | bytearray | memoryview) -> SniffResult:
        """The verdict after one more client datagram."""
        self._datagrams += 1
        dgram = memoryview(datagram)
        if not dgram or not dgram[0] & LONG_HEADER:
            return Verdict.NOT_THIS_PROTOCOL if self._datagrams == 1 else Verdict.UNKNOWN
        if len(dgram) >= 5 and int.from_bytes(dgram[1:5], "big") not in _VERSIONS:
            # a long header with an unknown version: maybe QUIC, surely unreadable
            return Verdict.NOT_THIS_PROTOCOL if self._datagrams == 1 else Verdict.UNKNOWN
        if not QUIC_DECRYPT_AVAILABLE:
            return Verdict.UNKNOWN
        try:
            start = 0
            seen_initial = False
            while start < len(dgram) and dgram[start] & LONG_HEADER:
                pkt = _parse_long_header(dgram, start)
                if pkt.pn_offset >= 0:
                    seen_initial = True
                    for offset, data in _crypto_frames(_decrypt(dgram, pkt, start)):
                        if offset + len(data) > self._limit:
                            return Verdict.UNKNOWN
                        self._crypto.setdefault(offset, bytes(data))
                start = pkt.end
            if not seen_initial:
                raise _Bad("no Initial packet")
        except _Bad:
            return Verdict.NOT_THIS_PROTOCOL if self._datagrams == 1 else Verdict.UNKNOWN
        return self._hello()

    def _hello(self) -> SniffResult:
        stream = self._contiguous()
        if len(stream) >= HANDSHAKE_HEADER:
            if stream[0] != HANDSHAKE_CLIENT_HELLO:
                return Verdict.UNKNOWN
            need = HANDSHAKE_HEADER + int.from_bytes(stream[1:4], "big")
            if need > self._limit:
                return Verdict.UNKNOWN
            if len(stream) >= need:
                try:
                    name = server_name_from_hello(stream[HANDSHAKE_HEADER:need])
                except ValueError:
                    return Verdict.UNKNOWN
                return Sniffed(name, "quic") if name else Verdict.UNKNOWN
        return Verdict.NEED_MORE if self._datagrams < self._max_datagrams else Verdict.UNKNOWN

    def _contiguous(self) -> bytes:
        """CRYPTO bytes from offset 0 up to the first gap (frames may overlap or reorder)."""
        out = bytearray()
        pending: dict[int, bytes] = dict(self._crypto)
        progressed = True
        while progressed:
            progressed = False
            for offset in sorted(pending):
                data = pending[offset]
                if offset <= len(out) < offset + len(data):
                    out += data[len(out) - offset :]
                    del pending[offset]
                    progressed = True
                    break
                if offset + len(data) <= len(out):
                    del pending[offset]
                    progressed = True
                    break
        return bytes(out)


def sniff_quic(datagram: bytes | bytearray | memoryview) -> SniffResult:
    """One-shot form for a single datagram (a ClientHello that fits one Initial)."""
    return QuicSniffer(max_datagrams=1).feed(datagram)
