"""QUIC Initial SNI: the RFC 9001 A.2 packet, split ClientHellos, v2, and degradation."""

from __future__ import annotations

import pytest

from tests.unit.sniff.sniff_vectors import (
    RFC9001_CLIENT_INITIAL,
    RFC9001_DCID,
    RFC9001_PLAINTEXT,
    RFC9001_UNPROTECTED_HEADER,
    ssl_client_hello,
)
from ztun.sniff import QuicSniffer, Sniffed, Verdict, client_initial_keys, sniff_quic

cryptography = pytest.importorskip("cryptography", reason="QUIC decryption needs cryptography")

from tests.unit.sniff.quic_builder import crypto_frame, initial, protect  # noqa: E402
from ztun.sniff.quic import QUIC_V2  # noqa: E402


def test_rfc9001_initial_keys() -> None:
    key, iv, hp = client_initial_keys(RFC9001_DCID)
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_rfc9001_a2_client_initial() -> None:
    assert sniff_quic(RFC9001_CLIENT_INITIAL) == Sniffed("example.com", "quic")


def test_builder_reproduces_rfc9001_a2() -> None:
    """The test encryptor is right, so packets built with it are real Initials."""
    packet = protect(RFC9001_UNPROTECTED_HEADER, 18, RFC9001_PLAINTEXT, RFC9001_DCID, 1)
    assert packet == RFC9001_CLIENT_INITIAL


def hello_handshake(name: str) -> bytes:
    return ssl_client_hello(name, tls13_only=True)[5:]  # drop the TLS record header


def test_hello_split_across_two_initials_out_of_order() -> None:
    hs = hello_handshake("split.example")
    dcid = bytes(range(8))
    first = initial(dcid, crypto_frame(0, hs[:150]), pn=0)
    second = initial(dcid, crypto_frame(150, hs[150:]), pn=1)
    s = QuicSniffer()
    assert s.feed(second) is Verdict.NEED_MORE  # a gap at offset 0
    assert s.feed(first) == Sniffed("split.example", "quic")


def test_overlapping_and_reordered_frames_in_one_packet() -> None:
    hs = hello_handshake("overlap.example")
    frames = crypto_frame(100, hs[100:]) + b"\x01" + crypto_frame(0, hs[:120])
    assert sniff_quic(initial(b"\xaa" * 20, frames)) == Sniffed("overlap.example", "quic")


def test_quic_v2_and_a_token() -> None:
    hs = hello_handshake("v2.example")
    dgram = initial(b"\x01\x02\x03\x04", crypto_frame(0, hs), version=QUIC_V2, token=b"t" * 30)
    assert sniff_quic(dgram) == Sniffed("v2.example", "quic")


def test_coalesced_handshake_packet_is_skipped() -> None:
    hs = hello_handshake("coalesced.example")
    first = initial(b"\x05" * 8, crypto_frame(0, hs), size=600)
    # a (fake) Handshake packet after it: type bits 2, its own length
    handshake_pkt = bytes([0xE0]) + (1).to_bytes(4, "big") + b"\x00\x00" + b"\x40\x14" + bytes(20)
    assert sniff_quic(first + handshake_pkt) == Sniffed("coalesced.example", "quic")


def test_gives_up_after_bounded_datagrams() -> None:
    hs = hello_handshake("never.example")
    s = QuicSniffer(max_datagrams=3)
    partial = initial(b"\x07" * 8, crypto_frame(0, hs[:100]))
    assert s.feed(partial) is Verdict.NEED_MORE
    assert s.feed(partial) is Verdict.NEED_MORE
    assert s.feed(partial) is Verdict.UNKNOWN


@pytest.mark.parametrize(
    "dgram",
    [
        b"",
        b"\x40" + bytes(30),  # short header
        bytes([0xC0]) + (0xFACEB00C).to_bytes(4, "big") + bytes(40),  # unknown version
        bytes([0xC0]) + (1).to_bytes(4, "big") + b"\x15" + bytes(60),  # DCID > 20
        RFC9001_CLIENT_INITIAL[:500],  # cut: packet longer than datagram
        b"\x13\x00\x00\x00\x01" + bytes(50),  # DNS-ish
    ],
)
def test_not_quic(dgram: bytes) -> None:
    assert sniff_quic(dgram) is Verdict.NOT_THIS_PROTOCOL


def test_tampered_packet_fails_authentication() -> None:
    bad = bytearray(RFC9001_CLIENT_INITIAL)
    bad[-1] ^= 1
    assert sniff_quic(bytes(bad)) is Verdict.NOT_THIS_PROTOCOL


def test_without_cryptography_quic_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ztun.sniff.quic.QUIC_DECRYPT_AVAILABLE", False)
    assert sniff_quic(RFC9001_CLIENT_INITIAL) is Verdict.UNKNOWN
    assert sniff_quic(b"\x40" + bytes(30)) is Verdict.NOT_THIS_PROTOCOL
