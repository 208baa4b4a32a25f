"""The router's loop guard: a flow to ztun's own proxy that came back into the TUN is
refused, never carried through that proxy (which would recurse without end)."""

from __future__ import annotations

import ipaddress

import pytest

from ztun.dns.fakeip import FakeIpPool
from ztun.outbound import DirectOutbound
from ztun.router import LoopDetected, Router

PROXY4 = (ipaddress.ip_address("10.200.1.2"), 1080)
PROXY6 = (ipaddress.ip_address("fd00:200:1::2"), 1080)


def router() -> Router:
    direct = DirectOutbound()
    return Router(
        outbounds={"default": direct, "direct": direct},
        proxy_endpoints=frozenset({PROXY4, PROXY6}),
    )


@pytest.mark.parametrize("network", ["tcp", "udp"])
@pytest.mark.parametrize("endpoint", [PROXY4, PROXY6], ids=["v4", "v6"])
def test_a_flow_to_the_proxy_is_a_loop(network: str, endpoint) -> None:  # type: ignore[no-untyped-def]
    address, port = endpoint
    with pytest.raises(LoopDetected, match="exclude the proxy's address"):
        router().decide(network, address, port)


def test_other_ports_and_addresses_of_the_proxy_host_pass() -> None:
    r = router()
    assert r.decide("tcp", PROXY4[0], 443).target.port == 443
    assert r.decide("tcp", ipaddress.ip_address("10.200.1.3"), 1080).target.host == "10.200.1.3"


def test_a_sniffed_name_keeps_the_real_address_a_fake_one_does_not() -> None:
    """The target of a sniffed flow is the name; it remembers the address the app used
    (socks4:// sends that), unless that address is a fake-IP one (meaningless outside)."""
    real = ipaddress.ip_address("192.0.2.7")
    sniffed = router().decide("tcp", real, 80, "www.example.test").target
    assert (sniffed.host, sniffed.port, sniffed.seen_ip) == ("www.example.test", 80, real)
    pool = FakeIpPool()
    fake = pool.allocate("www.example.test", 4)
    assert fake is not None
    r = Router(outbounds={"default": DirectOutbound(), "direct": DirectOutbound()}, pool=pool)
    named = r.decide("tcp", fake, 80, "www.example.test").target
    assert (named.host, named.seen_ip) == ("www.example.test", None)
    assert r.decide("tcp", real, 80).target.seen_ip is None  # an address needs no second
