"""MSS/MTU handling: with the TUN at 1280 bytes, every SYN on the TUN announces an MSS that
fits (IPv4: 1280 - 40 = 1240; IPv6: 1280 - 60 = 1220), and large transfers still work.

The capture is on the TUN inside the client: it holds the app's SYNs and the SYN-ACKs the
implementation answers with (and, for a NAT-to-the-kernel design such as ztun's, the
rewritten copies of both) -- an MSS above the MTU in any of them would make the far side
send segments that cannot pass.
"""

from __future__ import annotations

import random
import re

import pytest
from scapy.layers.inet import TCP

from harness.capture import capture
from harness.decode import PROTO_TCP, DecodeError, decode_ip, packets_of
from harness.peers.targets import seeded_sha256
from harness.suite.path import DEVICE, MIB, StartPath, download, upload
from ztun.tools import tool

pytestmark = [pytest.mark.conformance, pytest.mark.pcap]

MTU = 1280
HEADERS = {4: 20 + 20, 6: 40 + 20}
"""IP + TCP header bytes without options: MSS = MTU - HEADERS[version] (RFC 879, 8200)."""
TRANSFER = 8 * MIB
SYN_FILTER = "(ip and tcp[tcpflags] & tcp-syn != 0) or (ip6 and ip6[6] == 6 and ip6[53] & 2 != 0)"
"""SYNs and SYN-ACKs only (IPv6 without extension headers: TCP flags at byte 40 + 13)."""
NO_MSS = -1


def _device_mtu(text: str) -> int | None:
    match = re.search(r"\bmtu (\d+)\b", text)
    return int(match.group(1)) if match else None


def _syn_mss(l4: bytes) -> int:
    """The MSS option of a SYN (NO_MSS when absent: the peer then assumes 536/1220)."""
    for kind, value in TCP(l4).options:
        if kind == "MSS":
            return int(value)
    return NO_MSS


@pytest.mark.timeout(120)
def test_mss_mtu_1280(start_path: StartPath, rng: random.Random) -> None:
    """With the TUN at MTU 1280 every SYN and SYN-ACK announces an MSS that fits (RFC 879,
    RFC 8200) and 8 MiB pass each way per family: a larger MSS makes peers send segments
    the link cannot carry, and transfers stall."""
    path = start_path("danted", targets=["data"], mtu=MTU)
    link = path.client.run([tool("ip"), "-o", "link", "show", DEVICE], timeout=10.0, check=True)
    assert _device_mtu(link.stdout) == MTU, f"the implementation did not apply --mtu: {link.stdout}"
    seed = rng.randrange(1 << 31)
    with capture(path.client, DEVICE, SYN_FILTER) as cap:
        for v6 in (False, True):
            family = "IPv6" if v6 else "IPv4"
            assert upload(path, TRANSFER, seed, v6=v6) == (
                TRANSFER,
                seeded_sha256(seed, TRANSFER),
            ), family
            assert download(path, TRANSFER, seed, v6=v6) == (
                TRANSFER,
                seeded_sha256(seed, TRANSFER),
            ), family
    seen: dict[tuple[int, str], list[int]] = {}
    too_big: list[str] = []
    for frame, data in packets_of(cap.path):
        try:
            packet = decode_ip(data)
        except DecodeError:
            continue
        if packet.protocol != PROTO_TCP or "S" not in packet.tcp_flags:
            continue
        kind = "SYN-ACK" if "A" in packet.tcp_flags else "SYN"
        mss = _syn_mss(packet.l4)
        seen.setdefault((packet.version, kind), []).append(mss)
        if mss > MTU - HEADERS[packet.version]:
            too_big.append(f"#{frame.index} {packet.summary()} MSS {mss}")
    assert not too_big, (
        f"SYNs on {DEVICE} announce an MSS above MTU {MTU} - headers:\n  " + "\n  ".join(too_big)
    )
    missing = [f"IPv{v} {k}" for v in (4, 6) for k in ("SYN", "SYN-ACK") if (v, k) not in seen]
    assert not missing, f"no {', '.join(missing)} captured on {DEVICE}: {cap.path}"
