"""Checksum arithmetic against RFC examples and a naive word-by-word reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_helpers import naive_ones_sum

from ztun.wire import (
    apply_delta,
    checksum_delta,
    incremental_update,
    internet_checksum,
    ones_sum,
    pseudo_header_sum,
)

# RFC 1071 sec. 3 worked example: these 8 bytes sum to 0xddf2.
RFC1071_BYTES = bytes.fromhex("0001f203f4f5f6f7")
# A classic IPv4 header (checksum field zeroed) whose checksum is 0xb861.
IPV4_HEADER = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")


def test_rfc1071_example() -> None:
    assert ones_sum(RFC1071_BYTES) == 0xDDF2
    assert internet_checksum(RFC1071_BYTES) == 0xDDF2 ^ 0xFFFF


def test_known_ipv4_header_checksum() -> None:
    assert internet_checksum(IPV4_HEADER) == 0xB861
    filled = IPV4_HEADER[:10] + b"\xb8\x61" + IPV4_HEADER[12:]
    assert ones_sum(filled) == 0xFFFF


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"\0\0\0", 0),
        (b"\xff\xff", 0xFFFF),
        (b"\xff\xff\xff\xff", 0xFFFF),  # -0 stays -0: never folds to +0
        (b"\x01", 0x0100),  # odd length: padded on the right
        (b"\x00\x01\xff\xfe", 0xFFFF),
    ],
)
def test_ones_sum_edges(data: bytes, expected: int) -> None:
    assert ones_sum(data) == expected == naive_ones_sum(data)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_every_bytes_like(kind: type) -> None:
    assert ones_sum(kind(RFC1071_BYTES)) == 0xDDF2


@given(st.binary(max_size=2000), st.integers(0, 0x3FFFF))
def test_ones_sum_matches_naive(data: bytes, initial: int) -> None:
    assert ones_sum(data, initial) == naive_ones_sum(data, initial)


@given(st.binary(max_size=200))
def test_filled_checksum_verifies(data: bytes) -> None:
    body = bytearray(data) + b"\0\0"  # checksum field at an even offset at the end
    if len(data) % 2:
        body = bytearray(data) + b"\0" + b"\0\0"
    body[-2:] = internet_checksum(body).to_bytes(2, "big")
    assert ones_sum(body) == 0xFFFF


@given(
    st.sampled_from([4, 16]).flatmap(
        lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
    ),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
)
def test_pseudo_header_matches_naive(addrs: tuple[bytes, bytes], proto: int, length: int) -> None:
    src, dst = addrs
    if len(src) == 4:  # RFC 793: src, dst, zero, proto, 16-bit length
        header = src + dst + bytes([0, proto]) + length.to_bytes(2, "big")
    else:  # RFC 8200 sec. 8.1: src, dst, 32-bit length, 3 zero bytes, next header
        header = src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])
    assert pseudo_header_sum(src, dst, proto, length) == naive_ones_sum(header)


@pytest.mark.parametrize(("src", "dst"), [(b"\0" * 4, b"\0" * 16), (b"\0" * 5, b"\0" * 5)])
def test_pseudo_header_refuses_bad_addresses(src: bytes, dst: bytes) -> None:
    with pytest.raises(ValueError, match="4- or two 16-byte"):
        pseudo_header_sum(src, dst, 6, 20)


def test_rfc1624_example() -> None:
    # RFC 1624 sec. 4: m = 0x5555 -> m' = 0x3285, other octets sum to 0xcd7a.
    # HC = ~(0xcd7a + 0x5555) = 0xdd2f; the correct new checksum is 0x0000,
    # where eqn. 2 would give the -0 (0xffff) the RFC warns about.
    assert incremental_update(0xDD2F, b"\x55\x55", b"\x32\x85") == 0x0000


def test_checksum_delta_refuses_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        checksum_delta(b"\0\0", b"\0\0\0\0")


def test_delta_is_precomputable_and_reversible() -> None:
    old, new = bytes.fromhex("0a000001c350"), bytes.fromhex("ac130001ffee")
    forward, backward = checksum_delta(old, new), checksum_delta(new, old)
    assert 0 <= forward <= 0xFFFE
    for checksum in (0x0000, 0x1234, 0xFFFE):
        assert apply_delta(apply_delta(checksum, forward), backward) in (
            checksum,
            checksum ^ 0xFFFF,
        )


@given(st.binary(min_size=2, max_size=400), st.data())
def test_incremental_equals_full_recompute(data: bytes, draw: st.DataObject) -> None:
    """Any even-aligned field replaced: RFC 1624 eqn. 3 equals a full recompute."""
    body = bytearray(data if len(data) % 2 == 0 else data + b"\0")
    body[0:2] = b"\0\0"  # checksum field at offset 0
    body[0:2] = internet_checksum(body).to_bytes(2, "big")
    words = (len(body) - 2) // 2
    if words == 0:
        return
    start = 2 + 2 * draw.draw(st.integers(0, words - 1))
    size = 2 * draw.draw(st.integers(1, (len(body) - start) // 2))
    new = draw.draw(st.binary(min_size=size, max_size=size))
    old = bytes(body[start : start + size])
    updated = incremental_update(int.from_bytes(body[0:2], "big"), old, new)
    body[start : start + size] = new
    body[0:2] = b"\0\0"
    if any(body):
        assert updated == internet_checksum(body)
    else:  # the one documented exception: all-zero data may give +0 instead of -0
        assert internet_checksum(body) == 0xFFFF
        assert updated in (0x0000, 0xFFFF)
