"""Rule matching: first match wins, groups AND, items OR, domains by label; a rule names
an outbound (the legacy Action values are names too), the default is the group `default`."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztun.rules import DEFAULT_GROUP, Action, Flow, Rule, RuleSet


def flow(
    domain: str | None = None, ip: str | None = "192.0.2.1", port: int = 443, network: str = "tcp"
) -> Flow:
    return Flow(network, ipaddress.ip_address(ip) if ip else None, port, domain)  # type: ignore[arg-type]


RULES = RuleSet(
    (
        Rule(Action.REJECT, domain_keywords=("ads",)),
        Rule(
            Action.DIRECT,
            domain_suffixes=frozenset({"lan", "corp.example"}),
            cidrs=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")),
        ),
        Rule(Action.DIRECT, domains=frozenset({"exact.example"})),
        Rule(Action.REJECT, networks=frozenset({"udp"}), ports=((443, 443), (8000, 8100))),
    ),
    default=Action.PROXY,
)


@pytest.mark.parametrize(
    ("f", "action"),
    [
        (flow("tracker.ads.example"), Action.REJECT),
        (flow("nas.lan"), Action.DIRECT),
        (flow("lan"), Action.DIRECT),
        (flow("notlan"), Action.PROXY),  # suffixes match whole labels
        (flow("a.b.corp.example"), Action.DIRECT),
        (flow("corp.example.evil"), Action.PROXY),
        (flow(None, "10.1.2.3"), Action.DIRECT),
        (flow(None, "fd12::1"), Action.DIRECT),
        (flow(None, "11.0.0.1"), Action.PROXY),
        (flow("exact.example"), Action.DIRECT),
        (flow("sub.exact.example"), Action.PROXY),
        (flow("Nas.LAN."), Action.DIRECT),
        (flow(None, None, 443, "udp"), Action.REJECT),
        (flow(None, None, 8050, "udp"), Action.REJECT),
        (flow(None, None, 8101, "udp"), Action.PROXY),
        (flow(None, None, 443, "tcp"), Action.PROXY),
    ],
)
def test_match(f: Flow, action: Action) -> None:
    assert RULES.match(f) is action


def test_explain_names_the_rule_and_memo_is_consistent() -> None:
    action, rule = RULES.explain(flow("nas.lan"))
    assert action is Action.DIRECT and rule is RULES.rules[1]
    assert RULES.explain(flow("nas.lan")) == (action, rule)
    assert RULES.explain(flow("elsewhere.example"))[1] is None


def test_all_groups_must_hold() -> None:
    rs = RuleSet(
        (
            Rule(
                Action.DIRECT,
                domain_suffixes=frozenset({"example"}),
                ports=((53, 53),),
                networks=frozenset({"udp"}),
            ),
        )
    )
    assert rs.match(flow("a.example", port=53, network="udp")) is Action.DIRECT
    assert rs.match(flow("a.example", port=53, network="tcp")) == DEFAULT_GROUP
    assert rs.match(flow("a.example", port=54, network="udp")) == DEFAULT_GROUP
    assert rs.match(flow("a.other", port=53, network="udp")) == DEFAULT_GROUP


def test_large_port_ranges_without_a_set() -> None:
    rs = RuleSet((Rule(Action.REJECT, ports=((1024, 65535),)),))
    assert rs.match(flow(port=40000)) is Action.REJECT
    assert rs.match(flow(port=80)) == DEFAULT_GROUP


def test_memo_is_bounded() -> None:
    rs = RuleSet((Rule(Action.DIRECT, ports=((1, 10),)),))
    for port in range(1, 5000):
        rs.match(flow(port=port))
    assert len(rs._memo) <= 4096


@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), min_size=1, max_size=20),
    st.integers(0, 2**32 - 1),
)
def test_cidr_buckets_agree_with_ipaddress(nets: list[tuple[int, int]], addr: int) -> None:
    networks = tuple(ipaddress.IPv4Network((a, p), strict=False) for a, p in nets)
    ip = ipaddress.IPv4Address(addr)
    rs = RuleSet((Rule(Action.DIRECT, cidrs=networks),))
    expected = any(ip in n for n in networks)
    assert (rs.match(Flow("tcp", ip, 1)) is Action.DIRECT) == expected
