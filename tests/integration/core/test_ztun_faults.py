"""ztun over a degraded path: loss and a clamped MTU between the client and the proxy
(harness `netem` fixture; this kernel lacks sch_netem, so loss is the harness's seeded
every-Nth iptables drop and delay/reorder/duplicate/corrupt skip with that reason)."""

from __future__ import annotations

import pytest
from test_ztun_core import MIB, download, upload
from ztun_path import StartPath

from harness.peers.targets import seeded_sha256

pytestmark = [pytest.mark.netns, pytest.mark.linux]


@pytest.mark.parametrize(("loss_pct", "mtu"), [(5, None), (None, 1280), (2, 1300)])
def test_byte_exact_over_a_degraded_link(start_path: StartPath, netem, rng, loss_pct, mtu) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted")
    faults = {k: v for k, v in (("loss_pct", loss_pct), ("mtu", mtu)) if v is not None}
    netem(path.topo.client, path.topo.iface("client", "proxy"), **faults)
    seed = rng.randrange(1 << 31)
    assert upload(path, 4 * MIB, seed) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
    assert download(path, 4 * MIB, seed + 1) == (4 * MIB, seeded_sha256(seed + 1, 4 * MIB))
