"""The auto-route plan: exact ladders per option, validation, and safe ordering."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztun.route import (
    AutoRouteConfig,
    PolicyRule,
    RoutePlanError,
    TableRoute,
    change_from_json,
    plan_auto_route,
)

V4 = ipaddress.ip_interface("172.19.0.1/30")
V6 = ipaddress.ip_interface("fdfe:dcba:9876::1/126")
PROXY = ipaddress.ip_address("10.200.1.2")


def describe(cfg: AutoRouteConfig) -> list[str]:
    return [c.describe() for c in plan_auto_route(cfg)]


def test_dual_stack_default_plan() -> None:
    cfg = AutoRouteConfig(device="ztun0", tun_addresses=(V4, V6), proxy_addresses=(PROXY,))
    assert describe(cfg) == [
        "ip -4 route add 0.0.0.0/0 dev ztun0 table 2022",
        "ip -6 route add ::/0 dev ztun0 table 2022",
        "ip -4 rule add to 10.200.1.2/32 lookup main priority 8999",
        "ip -4 rule add lookup main suppress_prefixlength 0 priority 9000",
        "ip -6 rule add lookup main suppress_prefixlength 0 priority 9000",
        "ip -4 rule add not fwmark 0x2022 lookup 2022 priority 9001",
        "ip -6 rule add not fwmark 0x2022 lookup 2022 priority 9001",
    ]


def test_v4_only_without_strict_leaves_v6_alone() -> None:
    cfg = AutoRouteConfig(device="t", tun_addresses=(V4,))
    assert all(c.family == socket.AF_INET for c in plan_auto_route(cfg))


def test_strict_blocks_unproxied_family_and_interface_bypass() -> None:
    cfg = AutoRouteConfig(
        device="t",
        tun_addresses=(V4,),
        exclude=(ipaddress.ip_network("2001:db8::/32"),),
        strict=True,
    )
    assert describe(cfg) == [
        "ip -4 route add 0.0.0.0/0 dev t table 2022",
        "ip -6 route add unreachable ::/0 table 2022",
        "ip -6 rule add to 2001:db8::/32 lookup main priority 8999",
        "ip -4 rule add lookup main suppress_prefixlength 0 priority 9000",
        "ip -6 rule add lookup main suppress_prefixlength 0 priority 9000",
        "ip -4 rule add not fwmark 0x2022 lookup 2022 priority 9001",
        "ip -6 rule add not fwmark 0x2022 lookup 2022 priority 9001",
        "ip -4 rule add not fwmark 0x2022 unreachable priority 9002",
        "ip -6 rule add not fwmark 0x2022 unreachable priority 9002",
    ]


def test_include_mode_routes_only_included_prefixes() -> None:
    cfg = AutoRouteConfig(
        device="t",
        tun_addresses=(V4,),
        include=(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24")),
        strict=True,
        capture_dns=True,
    )
    assert describe(cfg) == [
        "ip -4 route add 192.0.2.0/24 dev t table 2022",
        "ip -4 route add 198.51.100.0/24 dev t table 2022",
        "ip -4 rule add lookup main suppress_prefixlength 0 priority 9000",
        "ip -4 rule add not fwmark 0x2022 lookup 2022 priority 9001",
        "ip -4 rule add fwmark 0x0/0xffffffff to 192.0.2.0/24 unreachable priority 9002",
        "ip -4 rule add fwmark 0x0/0xffffffff to 198.51.100.0/24 unreachable priority 9002",
    ]


def test_dns_capture_rules_say_unmarked_without_invert() -> None:
    cfg = AutoRouteConfig(device="t", tun_addresses=(V4,), capture_dns=True)
    dns = [c for c in plan_auto_route(cfg) if isinstance(c, PolicyRule) and c.dport == 53]
    assert [c.describe() for c in dns] == [
        "ip -4 rule add fwmark 0x0/0xffffffff ipproto udp dport 53 lookup 2022 priority 8998",
        "ip -4 rule add fwmark 0x0/0xffffffff ipproto tcp dport 53 lookup 2022 priority 8998",
    ]
    assert not any(c.invert for c in dns)


def test_custom_table_mark_priority() -> None:
    cfg = AutoRouteConfig(
        device="t", tun_addresses=(V4,), table=51820, fwmark=0xCA6C, priority=5000
    )
    assert describe(cfg)[-1] == "ip -4 rule add not fwmark 0xca6c lookup 51820 priority 5000"


def test_duplicate_excludes_collapse() -> None:
    cfg = AutoRouteConfig(
        device="t",
        tun_addresses=(V4,),
        proxy_addresses=(PROXY, PROXY),
        exclude=(ipaddress.ip_network("10.200.1.2/32"),),
    )
    rules = [c for c in plan_auto_route(cfg) if isinstance(c, PolicyRule) and c.dst]
    assert len(rules) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": 254}, "reserved"),
        ({"table": 0}, "reserved"),
        ({"fwmark": 0}, "non-zero"),
        ({"fwmark": 0x100, "fwmask": 0xFF}, "no bit inside mask"),
        ({"priority": 2}, "outside"),
        ({"priority": 32765}, "outside"),
        ({"include": (ipaddress.ip_network("2001:db8::/32"),)}, "no IPv6 address"),
        ({"tun_addresses": ()}, "TUN address"),
        ({"device": ""}, "device"),
    ],
)
def test_invalid_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"device": "t", "tun_addresses": (V4,)}
    base.update(kwargs)
    with pytest.raises(RoutePlanError, match=message):
        plan_auto_route(AutoRouteConfig(**base))  # type: ignore[arg-type]


networks = st.one_of(
    st.builds(
        lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)


@given(
    exclude=st.lists(networks, max_size=4),
    strict=st.booleans(),
    dns=st.booleans(),
    dual=st.booleans(),
)
def test_every_prefix_of_the_plan_is_safe(
    exclude: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    strict: bool,
    dns: bool,
    dual: bool,
) -> None:
    """The traffic-moving rules come last, after the table and the escape hatches exist,
    and every change survives the journal's JSON round trip."""
    cfg = AutoRouteConfig(
        device="t",
        tun_addresses=(V4, V6) if dual else (V4,),
        exclude=tuple(exclude),
        strict=strict,
        capture_dns=dns,
    )
    plan = plan_auto_route(cfg)
    kinds = [
        "route" if isinstance(c, TableRoute) else ("move" if c.priority >= 9001 else "hatch")
        for c in plan
    ]
    assert kinds == sorted(kinds, key=["route", "hatch", "move"].index)
    assert len(set(plan)) == len(plan)
    for change in plan:
        assert change_from_json(change.to_json()) == change


def test_change_from_json_rejects_foreign_records() -> None:
    with pytest.raises(ValueError, match="not a route change"):
        change_from_json({"kind": "rule"})
    with pytest.raises(ValueError, match="unknown change kind"):
        change_from_json({"kind": "sysctl", "family": "inet"})
