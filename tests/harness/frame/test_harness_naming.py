"""Names: owner prefix, uniqueness, IFNAMSIZ; spec validation (no root)."""

from __future__ import annotations

import random

import pytest

from harness.artifacts import safe_test_dirname
from harness.hygiene import owner_prefix
from harness.plugin import derive_seed
from harness.topo import (
    IFNAMSIZ_MAX,
    HostSpec,
    LinkSpec,
    Namer,
    TopologySpec,
    client_proxy_server,
    worker_tag,
)


@pytest.mark.parametrize(
    ("worker", "tag"), [(None, "m"), ("master", "m"), ("gw0", "w0"), ("gw57", "w57")]
)
def test_worker_tag(worker: str | None, tag: str) -> None:
    assert worker_tag(worker) == tag


def test_names_share_the_owner_prefix_and_fit_ifnamsiz() -> None:
    namer = Namer("abcd", "gw99")
    scopes = [namer.scope() for _ in range(50)]
    names = {s.netns("client") for s in scopes} | {s.link(35, "b") for s in scopes}
    assert len(names) == 100
    for scope in scopes:
        link = scope.link(35, "b")
        assert len(link) <= IFNAMSIZ_MAX
        assert owner_prefix(link) == owner_prefix(scope.netns("server")) == "ztabcdw99-"


def test_workers_and_sessions_never_share_a_prefix() -> None:
    prefixes = {Namer("abcd", w).prefix for w in ("gw1", "gw11", "master")}
    prefixes.add(Namer(None, "gw1").prefix)
    assert len(prefixes) == 4
    # No prefix is a prefix of another (the leak check matches with startswith).
    for a in prefixes:
        assert not any(b != a and b.startswith(a) for b in prefixes)


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("zt4f2am-000-client", "zt4f2am-"),
        ("zt4f2aw12-0000a", "zt4f2aw12-"),
        ("ztprobe123-netem", "ztprobe123-"),
        ("ztvagrant4242-0", "ztvagrant4242-"),
        ("ztbench-24247-p", None),  # another tool's name: never ours to remove
        ("zsbc", None),
        ("zt4F2am-000-client", None),
    ],
)
def test_owner_prefix_only_matches_our_names(name: str, owner: str | None) -> None:
    assert owner_prefix(name) == owner


def test_default_spec_matches_the_contract() -> None:
    spec = client_proxy_server()
    assert [h.name for h in spec.hosts] == ["client", "proxy", "server"]
    assert not next(h for h in spec.hosts if h.name == "proxy").forwarding
    assert [(link.a, link.b, link.ipv4, link.ipv6) for link in spec.links] == [
        ("client", "proxy", "10.200.1.0/24", "fd00:200:1::/64"),
        ("proxy", "server", "10.201.1.0/24", "fd00:201:1::/64"),
    ]


@pytest.mark.parametrize(
    ("hosts", "links", "error"),
    [
        (["a", "a"], [], "duplicate"),
        (["a", "b"], [LinkSpec("a", "c")], "unknown host"),
        (["a"], [LinkSpec("a", "a")], "loops"),
        (["bad-name"], [], "identifier"),
    ],
)
def test_spec_validation(hosts: list[str], links: list[LinkSpec], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        TopologySpec.of(hosts=hosts, links=links)


def test_spec_accepts_host_specs() -> None:
    spec = TopologySpec.of([HostSpec("r", forwarding=True), "x"], [LinkSpec("r", "x")])
    assert spec.hosts[0].forwarding


def test_rng_is_derived_from_seed_and_node_id(
    seed: int, rng: random.Random, request: pytest.FixtureRequest
) -> None:
    nodeid = request.node.nodeid
    assert rng.random() == random.Random(derive_seed(seed, nodeid)).random()
    assert derive_seed(1, "a") != derive_seed(1, "b") != derive_seed(2, "b")


def test_artifact_dirnames_are_safe_and_distinct() -> None:
    a = safe_test_dirname("tests/x.py::test_a[v4-1/2]")
    b = safe_test_dirname("tests/x.py::test_a[v4-1:2]")
    assert "/" not in a and a != b
    assert safe_test_dirname("tests/x.py::test_b") == "tests.x.py--test_b"
    long = safe_test_dirname("t.py::" + "x" * 500)
    assert len(long) <= 120 and long != safe_test_dirname("t.py::" + "x" * 499)
