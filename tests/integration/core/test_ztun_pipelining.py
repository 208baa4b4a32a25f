"""ztun's SOCKS5 pipelining end to end: apps in the client namespace, the real TUN and
kernel, real danted and microsocks in the proxy namespace (issue 17 item 4).

The first CONNECT to a proxy goes apart; the next is pipelined on trial; danted answers
it, so the rest are pipelined, and a refusal to one of those reaches the app as a reset.
microsocks drops a request that came with the greeting: the trial flow is carried apart
after PIPELINE_TRIAL_TIMEOUT (1 s) and pipelining stays off. Which way each handshake
went is read from ztun's debug log ("established (pipelined)" / "(apart)"). Every test
builds its own namespaces (removed also on failure).
"""

from __future__ import annotations

import re

import pytest
from test_ztun_core import echo_once
from ztun_path import Path, StartPath

from harness.hosts import LogLine
from harness.proc import LocalProcess

pytestmark = [pytest.mark.netns, pytest.mark.linux]

CONNECTIONS = 5
DEAD_PORT = 5009  # nothing listens there on the server
LOG_TIMEOUT = 10.0


def handshakes(log: str) -> list[str]:
    """How each CONNECT went, in order: "apart" or "pipelined"."""
    return re.findall(r"CONNECT \S+ established \((apart|pipelined)\)", log)


def await_handshakes(path: Path, count: int) -> list[str]:
    # ztun logs before the relay starts, but the log reaches the file through the
    # harness's reader thread: await the count-th line rather than race it.
    process = path.ztun.process
    assert isinstance(process, LocalProcess)
    process.wait_output(lambda log: len(handshakes(log)) >= count, LOG_TIMEOUT)
    return handshakes(process.log_text())


def test_danted_pipelined_byte_exact_and_refusal_resets(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted", extra=("--loglevel", "debug"))
    payloads = [rng.randbytes(rng.randrange(1, 200_000)) for _ in range(CONNECTIONS)]
    for payload in payloads:
        assert echo_once(path, payload) == payload
    assert await_handshakes(path, CONNECTIONS) == ["apart"] + ["pipelined"] * (CONNECTIONS - 1)
    with (
        pytest.raises((ConnectionRefusedError, ConnectionResetError)),
        path.connect(DEAD_PORT) as sock,
    ):
        sock.sendall(b"x")
        sock.recv(1)
    path.ztun.process.wait_for(
        LogLine(r"refused CONNECT \S+:5009: connection refused \(0x05\)"), timeout=LOG_TIMEOUT
    )
    assert echo_once(path, b"still pipelined") == b"still pipelined"
    assert await_handshakes(path, CONNECTIONS + 1)[-1] == "pipelined"
    assert path.ztun.alive()


def test_microsocks_is_sent_apart_after_a_failed_trial(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("microsocks", extra=("--loglevel", "debug"))
    payloads = [rng.randbytes(rng.randrange(1, 100_000)) for _ in range(CONNECTIONS)]
    for payload in payloads:
        assert echo_once(path, payload) == payload
    assert await_handshakes(path, CONNECTIONS) == ["apart"] * CONNECTIONS
    assert "sending them apart from now on" in path.ztun.process.log_text()


def test_a_proxy_with_credentials_is_never_pipelined(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("microsocks", user="alice", password="s3cret", extra=("--loglevel", "debug"))
    for _ in range(3):
        payload = rng.randbytes(50_000)
        assert echo_once(path, payload) == payload
    assert await_handshakes(path, 3) == ["apart"] * 3
