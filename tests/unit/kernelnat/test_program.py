"""The kernel NAT's program in the kernel, held to its model with BPF_PROG_TEST_RUN.

The maps hold the entries of a stack's flows (both families); every packet -- edge
cases, then generated ones -- is run through the loaded program and through
`model.run`: the verdict, the bytes after the run and the counters of the entry it
hit must agree. Under BPF_PROG_TEST_RUN the skb is not CHECKSUM_PARTIAL (the
integration tests cover that state on a real TUN), and with
BPF_F_TEST_SKB_CHECKSUM_COMPLETE the kernel checks after the run that a
CHECKSUM_COMPLETE skb's csum still matches its bytes. Root only (BPF_PROG_LOAD).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernelnat_cases import Held, egress_packets, held_flows
from test_model import CASES_LEFT_TO_THE_STACK, _held_segment

from ztun.ebpf import syscall
from ztun.ebpf.syscall import ETH_HLEN
from ztun.kernelnat import FlowMaps, model, program
from ztun.kernelnat.layout import TC_ACT_REDIRECT, VALUE4
from ztun.kernelnat.maps import Counters
from ztun.wire import ACK, FIN, PSH, RST, SYN

BPF_F_TEST_SKB_CHECKSUM_COMPLETE = 1 << 2


@dataclass
class Loaded:
    held: Held
    maps: FlowMaps
    prog_fd: int

    def run(self, packet: bytes, flags: int = 0) -> syscall.TestRun:
        return syscall.test_run(self.prog_fd, packet, flags=flags, want_packet=True)

    def counters(self, key: bytes | None) -> Counters | None:
        return None if key is None else self.maps.counters(key)


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    if sys.platform != "linux":
        pytest.skip("eBPF is Linux-only")
    if os.geteuid() != 0:
        pytest.skip("requires root (CAP_BPF + CAP_NET_ADMIN) for BPF_PROG_LOAD/TEST_RUN")
    try:
        maps = FlowMaps()
    except syscall.BpfError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            pytest.skip(f"bpf(2) unavailable here: {exc}")
        raise
    held = held_flows()
    for key, entry in held.flows().items():
        maps.install(key, entry)
    fd = program.load(maps.fd4, maps.fd6, l3_offset=ETH_HLEN)
    yield Loaded(held, maps, fd)
    os.close(fd)
    maps.close()


def _agree(loaded: Loaded, packet: bytes) -> model.Verdict:
    """Run `packet` in the kernel and in the model; they must agree on everything."""
    want = model.run(packet, loaded.held.flows())
    before = loaded.counters(want.key)
    got = loaded.run(packet)
    assert (got.retval, got.packet) == (want.action, want.packet), packet.hex()
    if want.key is not None:
        assert before is not None
        assert loaded.counters(want.key) == before + Counters(1, want.payload)
    return want


def edge_cases() -> list[bytes]:
    cases = list(CASES_LEFT_TO_THE_STACK.values())
    for version in (4, 6):
        for flags in (ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK, SYN, 0, 0xFF):
            for payload in (b"", b"x", b"0123456789" * 100):
                cases.append(_held_segment(version, flags, payload))
    for packet in list(cases):
        cases += [packet[:cut] for cut in (0, 14, 19, 20, 39, 40, 41, 59, 60, 61)]
    return cases


def test_program_matches_model_on_edge_cases(loaded: Loaded) -> None:
    redirected = 0
    for packet in edge_cases():
        redirected += _agree(loaded, packet).action == TC_ACT_REDIRECT
    assert redirected > 20  # the cases do reach the rewrite


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_program_matches_model_on_generated_packets(loaded: Loaded, data: st.DataObject) -> None:
    _agree(loaded, data.draw(egress_packets(loaded.held)))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(256)) * 4])
def test_checksum_complete_skbs_keep_their_csum(
    loaded: Loaded, version: int, payload: bytes
) -> None:
    """A forwarded skb may come CHECKSUM_COMPLETE: the helpers must keep skb->csum the
    sum of the rewritten bytes (IPv6 needs BPF_F_IPV6 for that); the kernel's test run
    checks it and fails the run with EBADMSG if not."""
    for flags in (ACK, ACK | PSH, RST):
        packet = _held_segment(version, flags, payload)
        got = loaded.run(packet, BPF_F_TEST_SKB_CHECKSUM_COMPLETE)
        assert got.retval == TC_ACT_REDIRECT
        assert got.packet == model.run(packet, loaded.held.flows()).packet


def test_program_without_the_ipv6_flag_loads(loaded: Loaded) -> None:
    """The build for kernels older than BPF_F_IPV6 passes the verifier and rewrites."""
    fd = program.load(loaded.maps.fd4, loaded.maps.fd6, l3_offset=ETH_HLEN, ipv6_flag=False)
    try:
        for version in (4, 6):
            packet = _held_segment(version, ACK, b"z")
            got = syscall.test_run(fd, packet, want_packet=True)
            want = model.run(packet, loaded.held.flows())
            assert (got.retval, got.packet) == (TC_ACT_REDIRECT, want.packet)
    finally:
        os.close(fd)


def test_the_probe_finds_the_ipv6_flag() -> None:
    """Linux 6.16 added BPF_F_IPV6 (older stable kernels may have it backported, so
    only its presence is pinned down)."""
    if os.geteuid() != 0:
        pytest.skip("requires root for BPF_PROG_LOAD")
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (6, 16):
        pytest.skip(f"Linux {major}.{minor}: BPF_F_IPV6 may or may not be there")
    assert program.ipv6_flag_supported()


def test_tun_build_differs_only_in_offsets(loaded: Loaded) -> None:
    """The program on the TUN (l3_offset 0) is the tested one with every packet offset
    ETH_HLEN lower: the same instructions, the same loads from the context."""
    on_tun = program.nat_program(loaded.maps.fd4, loaded.maps.fd6)
    tested = program.nat_program(loaded.maps.fd4, loaded.maps.fd6, l3_offset=ETH_HLEN)
    assert len(on_tun) == len(tested)
    differing = [i for i in range(0, len(on_tun), 8) if on_tun[i : i + 8] != tested[i : i + 8]]
    for i in differing:
        a, b = on_tun[i : i + 8], tested[i : i + 8]
        assert a[:2] == b[:2], f"insn {i // 8}: opcode or registers differ"
        off_a, imm_a = (
            int.from_bytes(a[2:4], "little", signed=True),
            int.from_bytes(a[4:], "little", signed=True),
        )
        off_b, imm_b = (
            int.from_bytes(b[2:4], "little", signed=True),
            int.from_bytes(b[4:], "little", signed=True),
        )
        assert (off_b - off_a, imm_b - imm_a) in ((ETH_HLEN, 0), (0, ETH_HLEN), (0, -ETH_HLEN))
    fd = syscall.load_program(syscall.BPF_PROG_TYPE_SCHED_CLS, on_tun, program.PROG_NAME)
    os.close(fd)  # the verifier takes it as well


def test_maps_round_trip() -> None:
    if os.geteuid() != 0:
        pytest.skip("requires root for BPF_MAP_CREATE")
    held = held_flows()
    maps = FlowMaps(max_entries=4)
    try:
        key4, entry4 = next(iter(held.flows().items()))
        key6, entry6 = next((k, e) for k, e in held.flows().items() if len(k) == 36)
        assert maps.entry(key4) is None and maps.counters(key6) is None
        maps.install(key4, entry4)
        maps.install(key6, entry6)
        assert maps.entry(key4) == entry4 and maps.entry(key6) == entry6
        assert maps.counters(key4) == Counters(0, 0)
        syscall.map_update(maps.fd4, key4, VALUE4.struct.pack(entry4.rewrite, 1, 2, 7, 900))
        assert maps.remove(key4) == Counters(7, 900)  # read and deleted in one call
        assert maps.remove(key4) is None and maps.entry(key4) is None
        with pytest.raises(ValueError, match="flow key of 5 bytes"):
            maps.counters(b"12345")
        # Room for four per map: four more IPv4 keys fit (two at once), a fifth does not.
        for port in (1, 2):
            maps.install(key4[:10] + port.to_bytes(2, "big"), entry4)
        maps.install_all([(key4[:10] + p.to_bytes(2, "big"), entry4) for p in (3, 4)])
        assert maps.entry(key4[:10] + (4).to_bytes(2, "big")) == entry4
        with pytest.raises(syscall.BpfError) as info:
            maps.install(key4, entry4)
        assert info.value.errno == errno.E2BIG
    finally:
        maps.close()
