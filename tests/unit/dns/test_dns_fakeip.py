"""The fake-IP pool: stable, reversible, LRU-recycled, persistent."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztun.dns import FakeIpPool, load_pool, save_pool, write_atomic


def test_allocation_is_stable_case_insensitive_and_reversible() -> None:
    pool = FakeIpPool()
    a = pool.allocate("Example.COM.", 4)
    assert a == ipaddress.ip_address("198.18.0.1")  # the network address is never handed out
    assert pool.allocate("example.com", 4) == a
    assert pool.allocate("other.example", 4) == ipaddress.ip_address("198.18.0.2")
    assert pool.domain_for("198.18.0.1") == "example.com"
    assert pool.allocate("example.com", 6) == ipaddress.ip_address("fc00::1")
    assert pool.domain_for("fc00::1") == "example.com"
    assert pool.lookup("nothing.example", 4) is None
    assert pool.domain_for("198.18.9.9") is None
    assert pool.domain_for("192.0.2.1") is None
    assert pool.is_fake("198.19.255.255") and not pool.is_fake("198.20.0.0")


def test_lru_recycles_the_least_recently_used_address() -> None:
    pool = FakeIpPool(ipaddress.IPv4Network("10.0.0.0/29"), None)  # 6 usable addresses
    addrs = {d: pool.allocate(d, 4) for d in "abcdef"}
    assert str(addrs["f"]) == "10.0.0.6"  # never the broadcast address .7
    pool.domain_for(str(addrs["a"]))  # a connection to a's address is a use
    pool.allocate("c", 4)  # so is a repeated query
    g = pool.allocate("g", 4)
    assert g == addrs["b"]  # b was idle longest
    assert pool.domain_for(str(g)) == "g"
    assert pool.lookup("b", 4) is None
    assert len(pool) == 6


def test_max_entries_bounds_each_family() -> None:
    pool = FakeIpPool(max_entries=2)
    for name in ("a", "b", "c"):
        pool.allocate(name, 6)
    assert len(pool) == 2 and pool.lookup("a", 6) is None


def test_disabled_family_answers_none() -> None:
    pool = FakeIpPool(v6=None)
    assert pool.allocate("example.com", 6) is None
    assert not pool.is_fake("fc00::1")


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError):
        FakeIpPool().allocate(".", 4)
    with pytest.raises(ValueError):
        FakeIpPool().allocate("a" * 254, 4)


def test_state_round_trip_keeps_mapping_and_lru_order(tmp_path: Path) -> None:
    pool = FakeIpPool(ipaddress.IPv4Network("10.0.0.0/29"))
    for name in "abc":
        pool.allocate(name, 4)
    pool.allocate("x", 6)
    pool.domain_for("10.0.0.1")  # a becomes most recent
    assert pool.dirty
    path = tmp_path / "state" / "fakeip.json"
    save_pool(pool, path)
    assert not pool.dirty
    again = load_pool(path, ipaddress.IPv4Network("10.0.0.0/29"))
    assert again.lookup("a", 4) == ipaddress.ip_address("10.0.0.1")
    assert again.lookup("x", 6) == ipaddress.ip_address("fc00::1")
    assert again.allocate("d", 4) == ipaddress.ip_address("10.0.0.4")  # no reuse of live ones
    again.allocate("e", 4)
    again.allocate("f", 4)
    assert again.allocate("g", 4) == ipaddress.ip_address("10.0.0.2")  # b: the oldest


def test_changed_range_starts_that_family_empty(tmp_path: Path) -> None:
    pool = FakeIpPool()
    pool.allocate("a", 4)
    pool.allocate("a", 6)
    path = tmp_path / "s.json"
    save_pool(pool, path)
    moved = load_pool(path, ipaddress.IPv4Network("100.64.0.0/16"))
    assert moved.lookup("a", 4) is None  # its old address would mean something else now
    assert moved.lookup("a", 6) == ipaddress.ip_address("fc00::1")


def test_unreadable_state_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        pool = load_pool(path)
    assert len(pool) == 0 and "ignored" in caplog.text
    path.write_text(json.dumps({"version": 99}))
    assert len(load_pool(path)) == 0
    path.write_text(json.dumps({"version": 1, "v4": {"range": "198.18.0.0/15", "entries": 5}}))
    assert len(load_pool(path)) == 0
    assert len(load_pool(tmp_path / "missing.json")) == 0


def test_smaller_capacity_keeps_the_most_recent(tmp_path: Path) -> None:
    pool = FakeIpPool()
    for i in range(10):
        pool.allocate(f"d{i}.example", 4)
    path = tmp_path / "s.json"
    save_pool(pool, path)
    small = load_pool(path, max_entries=4)
    assert len(small) <= 4
    assert small.lookup("d3.example", 4) is not None  # offsets 0..3 still fit
    assert small.lookup("d9.example", 4) is None


def test_atomic_write_leaves_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.json"
    write_atomic(path, b"old")

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp file left behind


@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.booleans()), max_size=60))
def test_mapping_is_always_a_bijection(ops: list[tuple[str, bool]]) -> None:
    pool = FakeIpPool(ipaddress.IPv4Network("10.0.0.0/29"), None)
    given_out: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for name, reverse in ops:
        if reverse and name in given_out:
            pool.domain_for(str(given_out[name]))
        else:
            addr = pool.allocate(name, 4)
            assert addr is not None
            given_out[name] = addr
    live = {d: pool.lookup(d, 4) for d in given_out}
    live = {d: a for d, a in live.items() if a is not None}
    assert len(set(live.values())) == len(live) <= 6
    for domain, addr in live.items():
        assert pool.domain_for(str(addr)) == domain
