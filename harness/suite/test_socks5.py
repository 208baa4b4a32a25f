"""SOCKS5 round trip evidence: the proxy itself saw the CONNECT to the right target, and
what it relayed hashes the same as what the app sent and received."""

from __future__ import annotations

import hashlib
import random

import pytest

from harness.assertions import assert_socks5_roundtrip
from harness.peers.starters import RecordingSocks5
from harness.suite.path import ECHO_PORT, StartPath, echo

pytestmark = [pytest.mark.conformance]

PAYLOAD = 256 * 1024


@pytest.mark.timeout(60)
def test_socks5_roundtrip(start_path: StartPath, rng: random.Random) -> None:
    """One app connection is one CONNECT to the server's IPv4 address and port (no domain,
    no retry), relayed byte-exact both ways as the proxy itself saw it: a proxy's logs and
    policies are per CONNECT, and duplicate or wrong CONNECTs break them."""
    path = start_path("recording")
    assert isinstance(path.proxy, RecordingSocks5)
    payload = rng.randbytes(PAYLOAD)
    received = echo(path, payload)
    assert received == payload
    digest = hashlib.sha256(payload).hexdigest()
    request = assert_socks5_roundtrip(
        path.proxy,
        (path.server_v4, ECHO_PORT),
        digest,
        hashlib.sha256(received).hexdigest(),
        command="CONNECT",
    )
    assert request.target_atyp == "ipv4", f"CONNECT used address type {request.target_atyp}"
    assert request.bytes_to_target == request.bytes_from_target == PAYLOAD
    connects = [
        r for r in path.proxy.requests() if r.command == "CONNECT" and r.target_port == ECHO_PORT
    ]
    ours = [r for r in connects if r.sha256_to_target == digest]
    assert len(ours) == 1, f"{len(ours)} CONNECTs carried the payload: {ours}"
