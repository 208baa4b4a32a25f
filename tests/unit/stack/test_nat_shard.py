"""NAT port shards for `--workers N`: worker k of n hands out only ports k mod n.

The TUN's steering program sends the listener's answers to queue `nat_port % n`, so a
port outside the shard would strand a flow in another worker.
"""

from __future__ import annotations

import pytest

from ztun.stack.nat import FIRST_NAT_PORT, LAST_NAT_PORT, NatExhausted, TcpNatTable

SERVER, PEER = bytes((172, 19, 0, 1)), bytes((172, 19, 0, 2))


def table(shard: tuple[int, int]) -> TcpNatTable:
    return TcpNatTable(4, SERVER, PEER, 40001, shard=shard)


def flow(i: int) -> tuple[bytes, int, bytes, int]:
    return (SERVER, 1024 + i % 60000, bytes((93, 184, 216, i // 60000)), 443)


@pytest.mark.parametrize("shard", [(0, 1), (0, 2), (1, 2), (0, 3), (2, 3), (5, 7)])
def test_ports_stay_in_the_shard_and_cover_it(shard: tuple[int, int]) -> None:
    index, count = shard
    nat = table(shard)
    expected = [p for p in range(FIRST_NAT_PORT, LAST_NAT_PORT + 1) if p % count == index]
    ports = [nat.open(flow(i), now=0.0).nat_port for i in range(len(expected))]
    assert ports == expected  # every port of the shard, in order, none outside it
    with pytest.raises(NatExhausted):
        nat.open(flow(len(expected)), now=0.0)


def test_shard_wraps_around_to_its_first_port() -> None:
    nat = table((1, 2))
    sessions = [nat.open(flow(i), now=0.0) for i in range(3)]
    assert [s.nat_port for s in sessions] == [1025, 1027, 1029]
    for session in sessions:  # free them; the cursor moves on, then wraps
        nat.close(session, now=0.0)
    assert len(nat.expire(now=1e9)) == 3
    span = (LAST_NAT_PORT - 1025) // 2 + 1
    ports = [nat.open(flow(100 + i), now=1e9).nat_port for i in range(span)]
    assert ports[0] == 1031 and ports[-1] == 1029 and all(p % 2 == 1 for p in ports)


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_impossible_shard_is_refused(shard: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="NAT shard"):
        table(shard)
