"""Test-only QUIC Initial *encryption* (the sniffer only decrypts), RFC 9001 5.3-5.4.

Checked against RFC 9001 A.2 byte-for-byte before it is used to build new packets.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ztun.sniff import client_initial_keys
from ztun.sniff.quic import QUIC_V1, QUIC_V2


def varint(value: int) -> bytes:
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            out = bytearray(value.to_bytes(size, "big"))
            out[0] |= prefix
            return bytes(out)
    raise ValueError(value)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect(header: bytes, pn_offset: int, payload: bytes, dcid: bytes, version: int) -> bytes:
    """Encrypt ``payload`` and apply header protection to ``header`` (unprotected)."""
    key, iv, hp = client_initial_keys(dcid, version)
    pn_len = (header[0] & 0x03) + 1
    pn = int.from_bytes(header[pn_offset : pn_offset + pn_len], "big")
    nonce = bytes(a ^ b for a, b in zip(iv, pn.to_bytes(12, "big"), strict=True))
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    packet = bytearray(header + sealed)
    sample = bytes(packet[pn_offset + 4 : pn_offset + 20])
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


def initial(
    dcid: bytes,
    frames: bytes,
    *,
    pn: int = 0,
    version: int = QUIC_V1,
    scid: bytes = b"",
    token: bytes = b"",
    size: int = 1200,
) -> bytes:
    """A client Initial datagram carrying ``frames``, padded to ``size`` bytes."""
    pn_len = 4
    type_bits = {QUIC_V1: 0, QUIC_V2: 1}[version]
    first = 0xC0 | (type_bits << 4) | (pn_len - 1)
    head = (
        bytes([first])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + varint(len(token))
        + token
    )
    # length covers packet number + payload + tag; 2-byte varint keeps the math simple
    payload_len = max(len(frames), size - len(head) - 2 - pn_len - 16)
    length = pn_len + payload_len + 16
    header = head + (varint(length) if length >= 64 else b"\x40" + bytes([length]))
    pn_offset = len(header)
    header += pn.to_bytes(pn_len, "big")
    payload = frames + bytes(payload_len - len(frames))
    return protect(header, pn_offset, payload, dcid, version)
