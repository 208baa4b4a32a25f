"""A multi-queue TUN with the steering program: every packet comes out of its queue.

Everything happens inside one fresh namespace (topology_factory): the TUN, its
addresses and routes, and the apps -- UDP sockets sending from chosen source ports and
non-blocking TCP connects to the hairpin peer -- whose packets the kernel then steers.
Each packet read from queue q must have ``steering_key(packet) % nqueues == q``; every
packet sent must be found; packets the kernel sends on its own (IPv6 MLD) are held to
the same rule.

Queue numbers are the kernel's: the device's first descriptor is queue 0, then
`open_queue()` results in order; detaching a queue moves the last one into its slot
(drivers/net/tun.c, __tun_detach) -- which the worker orchestration has to follow.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from harness.hosts.netns import NetnsHost
from harness.topo import TopologySpec
from ztun.tun.base import Device
from ztun.tun.linux import LinuxTun, LinuxTunQueue
from ztun.tun.steering import load_program, source_hash, steering_key, steering_program

pytestmark = [pytest.mark.netns, pytest.mark.linux]

DEVICE = "mq0"
ADDR4 = ipaddress.IPv4Interface("198.18.0.1/30")
ADDR6 = ipaddress.IPv6Interface("fd00::1/126")
PEER4 = ipaddress.IPv4Address("198.18.0.2")
PEER6 = ipaddress.IPv6Address("fd00::2")
ROUTED4 = ipaddress.IPv4Network("203.0.113.0/24")  # an "app destination" via the TUN
ROUTED6 = ipaddress.IPv6Network("2001:db8:1::/64")
FLOWS_PER_KIND = 6  # consecutive ports: every residue mod 2 and mod 3 is hit
READ_TIMEOUT = 10.0
TUNSETQUEUE = 0x400454D9
IFF_DETACH_QUEUE = 0x0400

Flow = tuple[int, int, int, int]  # (ip version, protocol, source port, destination port)


def key(packet: bytes) -> int:
    return steering_key(packet, peer4=PEER4.packed, peer6=PEER6.packed)


def flow_of(packet: bytes) -> Flow | None:
    """(version, proto, sport, dport) of a TCP/UDP packet without extension headers."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        l4, proto = (packet[0] & 0x0F) * 4, packet[9]
    elif version == 6 and len(packet) >= 40:
        l4, proto = 40, packet[6]
    else:
        return None
    if proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) or len(packet) < l4 + 4:
        return None
    sport, dport = struct.unpack_from("!HH", packet, l4)
    return version, proto, sport, dport


@dataclass
class MqTun:
    host: NetnsHost
    tun: LinuxTun
    opened: list[LinuxTunQueue] = field(default_factory=list)

    def open_queues(self, count: int) -> list[LinuxTunQueue]:
        new = [self.tun.open_queue() for _ in range(count)]
        self.opened += new
        return new

    def link_exists(self) -> bool:
        return bool(self.host.netlink(lambda ipr: ipr.link_lookup(ifname=DEVICE)))

    def addresses(self) -> set[str]:
        def dump(ipr: Any) -> set[str]:
            found = ipr.link_lookup(ifname=DEVICE)
            if not found:
                return set()
            return {
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.addr("dump", index=found[0])
            }

        return self.host.netlink(dump)


@pytest.fixture
def make_tun(topology_factory: Any) -> Iterator[Any]:
    """make_tun(offload=False) -> MqTun: queue 0 of a multi-queue TUN in a fresh
    namespace, steered by the program, with routes to ROUTED4/ROUTED6 through it."""
    topo = topology_factory(TopologySpec.of(["apps"]))
    host: NetnsHost = topo.host("apps")
    made: list[MqTun] = []

    def make(*, offload: bool = False) -> MqTun:
        tun = LinuxTun(
            DEVICE,
            addresses=[ADDR4, ADDR6],
            netns=host.name,
            offload=offload,
            multi_queue=True,
        )
        made.append(MqTun(host, tun))
        prog = load_program(steering_program(peer4=PEER4.packed, peer6=PEER6.packed))
        try:
            tun.set_steering(prog)
        finally:
            os.close(prog)  # the device holds its own reference

        def routes(ipr: Any) -> None:
            ipr.route("add", dst=str(ROUTED4), oif=tun.index)
            ipr.route("add", dst=str(ROUTED6), oif=tun.index, family=socket.AF_INET6)

        host.netlink(routes)
        return made[-1]

    yield make
    for mq in made:
        for queue in mq.opened:
            queue.close()
        mq.tun.close()


def send_traffic(host: NetnsHost, rng: random.Random) -> tuple[set[Flow], list[socket.socket]]:
    """UDP datagrams to ROUTED4/6 and TCP SYNs to the peer, v4 and v6, from/to runs of
    consecutive ports; returns the flows and the connecting sockets (keep them open)."""
    flows: set[Flow] = set()
    pending: list[socket.socket] = []
    udp_base = rng.randrange(20000, 60000)
    tcp_base = rng.randrange(20000, 60000)
    sides = (
        (4, socket.AF_INET, str(ADDR4.ip), str(ROUTED4[7]), str(PEER4)),
        (6, socket.AF_INET6, str(ADDR6.ip), str(ROUTED6[7]), str(PEER6)),
    )
    for version, family, src, routed, peer in sides:
        for i in range(FLOWS_PER_KIND):
            with host.socket(family, socket.SOCK_DGRAM) as udp:
                udp.bind((src, udp_base + i))
                udp.sendto(b"steer me", (routed, 9))
            flows.add((version, socket.IPPROTO_UDP, udp_base + i, 9))
            tcp = host.socket(family, socket.SOCK_STREAM)
            pending.append(tcp)
            tcp.setblocking(False)
            tcp.bind((src, 0))
            assert tcp.connect_ex((peer, tcp_base + i)) == errno.EINPROGRESS
            flows.add((version, socket.IPPROTO_TCP, tcp.getsockname()[1], tcp_base + i))
    return flows, pending


def collect(queues: list[Device], expected: set[Flow]) -> dict[int, list[bytes]]:
    """Read every queue until each expected flow has shown up somewhere (or time out)."""
    got: dict[int, list[bytes]] = {q: [] for q in range(len(queues))}
    missing = set(expected)
    buf = memoryview(bytearray(65536 + 64))
    poller = select.poll()
    by_fd = {queue.fileno(): q for q, queue in enumerate(queues)}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + READ_TIMEOUT
    while missing and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            q = by_fd[fd]
            queue = queues[q]
            while True:
                try:
                    n = queue.read_into(buf)
                except BlockingIOError:
                    break
                packet = bytes(buf[queue.frame_header_len : n])
                got[q].append(packet)
                missing.discard(flow_of(packet))  # type: ignore[arg-type]
    assert not missing, f"never read from any queue: {sorted(missing)}"
    return got


def assert_steered(got: dict[int, list[bytes]], expected: set[Flow]) -> None:
    nqueues = len(got)
    misplaced = [
        (q, key(p) % nqueues, flow_of(p) or p[:40].hex())
        for q, packets in got.items()
        for p in packets
        if key(p) % nqueues != q
    ]
    assert not misplaced, f"(read on, steered to, flow): {misplaced}"
    seen = {flow_of(p) for packets in got.values() for p in packets}
    assert expected <= seen
    # the flows were chosen to spread: every queue got some of them
    for q, packets in got.items():
        assert any(flow_of(p) in expected for p in packets), f"queue {q} got none of the flows"


@pytest.mark.parametrize(
    ("nqueues", "offload"), [(2, False), (3, False), (3, True)], ids=["2q", "3q", "3q-offload"]
)
def test_each_packet_arrives_on_its_queue(
    make_tun: Any, rng: random.Random, nqueues: int, offload: bool
) -> None:
    mq = make_tun(offload=offload)
    queues: list[Device] = [mq.tun, *mq.open_queues(nqueues - 1)]
    for queue in queues:
        assert isinstance(queue, Device)
        assert queue.frame_header_len == (10 if offload else 0)
        assert (queue.name, queue.index, queue.mtu) == (DEVICE, mq.tun.index, mq.tun.mtu)
    flows, pending = send_traffic(mq.host, rng)
    try:
        assert_steered(collect(queues, flows), flows)
    finally:
        for sock in pending:
            sock.close()


CHILD_READER = """
import json, select, sys
from ztun.tun.linux import LinuxTunQueue
fd, netns, timeout_ms = int(sys.argv[1]), sys.argv[2], int(sys.argv[4])
want = {tuple(f) for f in json.loads(sys.argv[3])}
queue = LinuxTunQueue.adopt(fd, mtu=1500, netns=netns)
print(json.dumps([queue.name, queue.index, queue.frame_header_len]), flush=True)
buf, poller, seen = memoryview(bytearray(65600)), select.poll(), set()
poller.register(fd, select.POLLIN)
while not want <= seen and poller.poll(timeout_ms):
    while True:
        try:
            n = queue.read_into(buf)
        except BlockingIOError:
            break
        packet = bytes(buf[queue.frame_header_len : n])
        print(packet.hex(), flush=True)
        v, l4 = packet[0] >> 4, (packet[0] & 15) * 4 if packet[0] >> 4 == 4 else 40
        proto = packet[9] if v == 4 else packet[6]
        seen.add((v, proto, int.from_bytes(packet[l4:l4+2]), int.from_bytes(packet[l4+2:l4+4])))
queue.close()
"""


def expected_queue(flow: Flow, nqueues: int) -> int:
    """The steering rule restated for these flows: TCP to the peer by destination port,
    UDP by source_hash(source port, low 16 bits of the source address): the TUN's
    198.18.0.1 and fd00::1 both end in 1."""
    _, proto, sport, dport = flow
    return (dport if proto == socket.IPPROTO_TCP else source_hash(sport, 1)) % nqueues


def test_a_queue_passed_to_a_child_process_is_adopted(make_tun: Any, rng: random.Random) -> None:
    """What a worker started with pass_fds does with the descriptor number it is given:
    LinuxTunQueue.adopt asks the kernel for the name and the frame header (offloads on)."""
    mq = make_tun(offload=True)
    (queue1,) = mq.open_queues(1)
    flows, pending = send_traffic(mq.host, rng)
    try:
        mine = {f for f in flows if expected_queue(f, 2) == 0}
        theirs = flows - mine
        assert mine and theirs
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD_READER,
                str(queue1.fileno()),
                mq.host.name,
                json.dumps(sorted(theirs)),
                str(int(READ_TIMEOUT * 1000)),
            ],
            pass_fds=[queue1.fileno()],
            capture_output=True,
            text=True,
            timeout=READ_TIMEOUT + 20,
        )
        assert child.returncode == 0, child.stderr
        first, *lines = child.stdout.splitlines()
        assert json.loads(first) == [DEVICE, mq.tun.index, 10]
        got = {0: collect([mq.tun], mine)[0], 1: [bytes.fromhex(line) for line in lines]}
        assert_steered(got, flows)
    finally:
        for sock in pending:
            sock.close()
        queue1.close()


@pytest.mark.parametrize("detach_first", [False, True], ids=["open-then-detach", "detach-first"])
def test_detaching_queue_0_renumbers(make_tun: Any, rng: random.Random, detach_first: bool) -> None:
    """The parent's own descriptor leaves the queue set: which queue number is whose."""
    mq = make_tun()

    def detach_queue_0() -> None:
        fcntl.ioctl(mq.tun.fileno(), TUNSETQUEUE, struct.pack("16sH22x", b"", IFF_DETACH_QUEUE))

    if detach_first:
        detach_queue_0()
        q1, q2 = mq.open_queues(2)
        kernel_order: list[Device] = [q1, q2]  # numbered in the order they attached
    else:
        q1, q2 = mq.open_queues(2)
        detach_queue_0()
        kernel_order = [q2, q1]  # the last queue moved into the detached slot 0
    flows, pending = send_traffic(mq.host, rng)
    try:
        assert_steered(collect(kernel_order, flows), flows)
        with pytest.raises(BlockingIOError):  # nothing waits on the detached descriptor
            mq.tun.read_into(memoryview(bytearray(2048)))
    finally:
        for sock in pending:
            sock.close()


def test_closing_a_queue_leaves_the_device(make_tun: Any) -> None:
    mq = make_tun()
    q1, q2 = mq.open_queues(2)
    want = {str(ADDR4), str(ADDR6)}
    assert mq.link_exists() and mq.addresses() >= want
    q2.close()
    q2.close()  # idempotent
    assert q2.fileno() == -1
    assert mq.link_exists() and mq.addresses() >= want
    # The device lives as long as any queue does -- the first descriptor included.
    mq.tun.close()
    assert mq.link_exists()
    q1.close()
    assert not mq.link_exists()


def test_open_queue_needs_multi_queue(topology_factory: Any) -> None:
    host: NetnsHost = topology_factory(TopologySpec.of(["apps"])).host("apps")
    tun = LinuxTun(DEVICE, netns=host.name)
    try:
        with pytest.raises(OSError, match="multi_queue"):
            tun.open_queue()
    finally:
        tun.close()


@pytest.mark.parametrize("offload", [False, True])
def test_fd_url_adopts_a_tun_with_its_frame_header(topology_factory: Any, offload: bool) -> None:
    """`fd://N` of a TUN a parent opened with IFF_VNET_HDR must strip the 10-byte virtio
    header, not hand it to the stack as the start of an IP packet."""
    from ztun.tun import open_device

    host: NetnsHost = topology_factory(TopologySpec.of(["apps"])).host("apps")
    tun = LinuxTun(DEVICE, netns=host.name, offload=offload)
    try:
        device = open_device(
            f"fd://{os.dup(tun.fileno())}", mtu=1400, addresses=(), netns=host.name
        )
        try:
            assert isinstance(device, LinuxTunQueue)
            assert (device.name, device.index) == (DEVICE, tun.index)
            assert device.frame_header_len == (10 if offload else 0)
            assert device.mtu == 1400
        finally:
            device.close()
    finally:
        tun.close()


def test_fd_url_of_something_else_is_plain_packets() -> None:
    from ztun.tun import FdDevice, open_device

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        device = open_device(f"fd://{left.fileno()}", mtu=1500, addresses=())
        assert isinstance(device, FdDevice) and device.frame_header_len == 0
