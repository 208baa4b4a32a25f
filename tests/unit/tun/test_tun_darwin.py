"""macOS utun, byte for byte, on Linux.

No macOS kernel here, so these tests mock what cannot run: the utun control socket is a
``socketpair(AF_UNIX, SOCK_DGRAM)`` (one datagram per packet, as the kernel-control socket
delivers them) and the interface ioctls go to a recording function.  What *is* checked
exactly: the ioctl request numbers (``_IOC`` from ``sys/ioccom.h``), the structures against
ctypes mirrors of the XNU declarations (``sys/kern_control.h``, ``net/if.h``,
``netinet/in.h``, ``netinet6/in6_var.h``; LP64 natural layout, which ctypes reproduces on
x86_64 Linux as clang does on macOS), every byte handed to the kernel, and the 4-byte
big-endian family framing in both directions.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import os
import select
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from ctypes import c_char, c_int, c_int64, c_uint8, c_uint16, c_uint32

import pytest

from ztun.pump import FATAL_ERRNOS, TunPump
from ztun.stack.system import SystemStack, hairpin_peer
from ztun.tun import Device, DeviceError
from ztun.tun import darwin as d
from ztun.tun.darwin import DarwinUtun
from ztun.wire import build_icmp_echo, build_udp

pytestmark = pytest.mark.macos

LP64 = pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="LP64 layouts")

V4 = ipaddress.IPv4Interface("172.19.0.1/30")
V6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")
PKT4 = bytes(
    build_udp(
        ipaddress.ip_address("172.19.0.1"), ipaddress.ip_address("198.51.100.9"), 4000, 53, b"q"
    )
)
PKT6 = bytes(
    build_udp(
        ipaddress.ip_address("fdfe:dcba:9876::1"),
        ipaddress.ip_address("2001:db8::9"),
        4000,
        53,
        b"q6",
    )
)


# -- ctypes mirrors of the C declarations ------------------------------------------------


class ctl_info(ctypes.Structure):
    _fields_ = [("ctl_id", c_uint32), ("ctl_name", c_char * 96)]


class sockaddr_ctl(ctypes.Structure):
    _fields_ = [
        ("sc_len", c_uint8),
        ("sc_family", c_uint8),
        ("ss_sysaddr", c_uint16),
        ("sc_id", c_uint32),
        ("sc_unit", c_uint32),
        ("sc_reserved", c_uint32 * 5),
    ]


class sockaddr(ctypes.Structure):
    _fields_ = [("sa_len", c_uint8), ("sa_family", c_uint8), ("sa_data", c_char * 14)]


class sockaddr_in6(ctypes.Structure):
    _fields_ = [
        ("sin6_len", c_uint8),
        ("sin6_family", c_uint8),
        ("sin6_port", c_uint16),
        ("sin6_flowinfo", c_uint32),
        ("sin6_addr", c_uint8 * 16),
        ("sin6_scope_id", c_uint32),
    ]


class ifreq(ctypes.Structure):
    class _ifru(ctypes.Union):
        # the largest members of XNU's ifr_ifru are 16 bytes (struct sockaddr, ifkpi, ...)
        _fields_ = [("ifru_addr", sockaddr), ("ifru_flags", ctypes.c_short), ("ifru_mtu", c_int)]

    _fields_ = [("ifr_name", c_char * 16), ("ifr_ifru", _ifru)]


class ifaliasreq(ctypes.Structure):
    _fields_ = [
        ("ifra_name", c_char * 16),
        ("ifra_addr", sockaddr),
        ("ifra_broadaddr", sockaddr),
        ("ifra_mask", sockaddr),
    ]


class in6_addrlifetime(ctypes.Structure):
    _fields_ = [
        ("ia6t_expire", c_int64),  # time_t
        ("ia6t_preferred", c_int64),
        ("ia6t_vltime", c_uint32),
        ("ia6t_pltime", c_uint32),
    ]


class in6_aliasreq(ctypes.Structure):
    _fields_ = [
        ("ifra_name", c_char * 16),
        ("ifra_addr", sockaddr_in6),
        ("ifra_dstaddr", sockaddr_in6),
        ("ifra_prefixmask", sockaddr_in6),
        ("ifra_flags", c_int),
        ("ifra_lifetime", in6_addrlifetime),
    ]


# -- constants and layouts ---------------------------------------------------------------


def test_ioctl_numbers_match_the_headers() -> None:
    """_IOWR('N', 3, struct ctl_info) etc., and the values other implementations hard-code
    (sing-tun: SIOCAIFADDR_IN6 = 2155899162)."""
    assert d.CTLIOCGINFO == 0xC0644E03
    assert d.SIOCSIFMTU == 0x80206934
    assert d.SIOCAIFADDR == 0x8040691A
    assert d.SIOCAIFADDR_IN6 == 0x8080691A == 2155899162
    assert d.SIOCGIFFLAGS == 0xC0206911
    assert d.SIOCSIFFLAGS == 0x80206910


def test_constants_match_the_headers() -> None:
    assert (d.PF_SYSTEM, d.SYSPROTO_CONTROL, d.AF_SYS_CONTROL) == (32, 2, 2)
    assert d.UTUN_CONTROL_NAME == "com.apple.net.utun_control"
    assert d.UTUN_OPT_IFNAME == 2 and d.MAX_KCTL_NAME == 96
    assert d.IN6_IFF_NODAD == 0x20 and d.ND6_INFINITE_LIFETIME == 0xFFFFFFFF
    assert d.AF_INET_HDR == b"\x00\x00\x00\x02" and d.AF_INET6_HDR == b"\x00\x00\x00\x1e"


@LP64
@pytest.mark.parametrize(
    ("packer", "mirror", "size"),
    [
        (d.CTL_INFO, ctl_info, 100),
        (d.SOCKADDR_CTL, sockaddr_ctl, 32),
        (d.IFREQ_MTU, ifreq, 32),
        (d.IFREQ_FLAGS, ifreq, 32),
        (d.IFALIASREQ, ifaliasreq, 64),
        (d.IN6_ALIASREQ, in6_aliasreq, 128),
    ],
)
def test_struct_sizes(packer: struct.Struct, mirror: type[ctypes.Structure], size: int) -> None:
    assert packer.size == ctypes.sizeof(mirror) == size


@LP64
def test_in6_aliasreq_fields_land_at_c_offsets() -> None:
    """Pack distinct values with the module's format; read them back through the C mirror."""
    raw = d.IN6_ALIASREQ.pack(
        b"utun9",
        b"\x1c\x1e" + bytes(26),
        b"\x1c\x1e\x00\x07" + bytes(24),
        b"\x1c\x1e" + bytes(26),
        0x20,
        -5,
        7,
        0x11223344,
        0x55667788,
    )
    c = in6_aliasreq.from_buffer_copy(raw)
    assert c.ifra_name == b"utun9" and c.ifra_flags == 0x20
    assert in6_aliasreq.ifra_flags.offset == 100 and in6_aliasreq.ifra_lifetime.offset == 104
    assert c.ifra_dstaddr.sin6_port == 0x0700
    assert (c.ifra_lifetime.ia6t_expire, c.ifra_lifetime.ia6t_preferred) == (-5, 7)
    assert (c.ifra_lifetime.ia6t_vltime, c.ifra_lifetime.ia6t_pltime) == (0x11223344, 0x55667788)


def test_ctl_info_bytes() -> None:
    raw = d.ctl_info()
    assert raw == bytes(4) + b"com.apple.net.utun_control" + bytes(96 - 26)
    assert ctl_info.from_buffer_copy(raw).ctl_name == b"com.apple.net.utun_control"
    # what the kernel writes back: the id in ctl_id
    assert d.parse_ctl_info(b"\x07\x00\x00\x00" + raw[4:]) == 7
    with pytest.raises(ValueError, match="longer than 95"):
        d.ctl_info("x" * 96)


def test_sockaddr_ctl_bytes() -> None:
    raw = d.sockaddr_ctl(0x11223344, 8)
    assert raw == bytes.fromhex("202002004433221108000000") + bytes(20)
    c = sockaddr_ctl.from_buffer_copy(raw)
    assert (c.sc_len, c.sc_family, c.ss_sysaddr, c.sc_id, c.sc_unit) == (32, 32, 2, 0x11223344, 8)


@pytest.mark.parametrize(
    ("name", "unit"), [("", 0), ("utun", 0), ("utun0", 1), ("utun7", 8), ("utun123", 124)]
)
def test_utun_unit(name: str, unit: int) -> None:
    assert d.utun_unit(name) == unit


@pytest.mark.parametrize("name", ["ztun0", "tun0", "utun01", "utun-1", "utun7 ", "UTUN3", "utun1x"])
def test_utun_unit_rejects_names_macos_cannot_give(name: str) -> None:
    with pytest.raises(ValueError, match=r"tun://utunN"):
        d.utun_unit(name)


# -- interface configuration: every byte of every ioctl ----------------------------------


def _name16(name: str) -> bytes:
    return name.encode().ljust(16, b"\0")


def test_mtu_request() -> None:
    req = d.mtu_request("utun3", 1400)
    assert (req.family, req.request) == (socket.AF_INET, d.SIOCSIFMTU)
    assert req.payload == _name16("utun3") + (1400).to_bytes(4, "little") + bytes(12)
    assert ifreq.from_buffer_copy(req.payload).ifr_ifru.ifru_mtu == 1400


def test_inet_request_points_at_the_hairpin_peer() -> None:
    """ifconfig utun3 inet 172.19.0.1 172.19.0.2 netmask 255.255.255.252: the p2p
    destination is the stack's hairpin peer, so its host route comes with the address."""
    req = d.inet_request("utun3", V4)
    assert (req.family, req.request) == (socket.AF_INET, d.SIOCAIFADDR)
    # sockaddr_in: sin_len 16, AF_INET 2, port 0, address, zero[8]
    assert req.payload == (
        _name16("utun3")
        + bytes.fromhex("10020000" + "ac130001")  # ifra_addr 172.19.0.1
        + bytes(8)
        + bytes.fromhex("10020000" + "ac130002")  # ifra_broadaddr (p2p destination)
        + bytes(8)
        + bytes.fromhex("10020000" + "fffffffc")  # ifra_mask /30
        + bytes(8)
    )
    assert req.what == "utun3 inet 172.19.0.1 172.19.0.2 netmask 255.255.255.252"
    wide = ipaddress.IPv4Interface("10.9.8.7/24")
    dst = d.inet_request("utun3", wide).payload[32:48]
    assert dst[4:8] == hairpin_peer(wide).packed == bytes([10, 9, 8, 8])


def test_inet_request_host_address_points_at_itself() -> None:
    req = d.inet_request("utun3", ipaddress.IPv4Interface("10.1.2.3/32"))
    assert req.payload[16:32] == req.payload[32:48]


def test_inet6_request_bytes() -> None:
    req = d.inet6_request("utun3", V6)
    assert (req.family, req.request) == (socket.AF_INET6, d.SIOCAIFADDR_IN6)
    # sockaddr_in6: sin6_len 28, AF_INET6 30, port 0, flowinfo 0, address, scope_id 0
    addr = bytes.fromhex("1c1e0000" + "00000000" + "fdfedcba987600000000000000000001" + "00000000")
    mask = bytes.fromhex("1c1e0000" + "00000000" + "fffffffffffffffffffffffffffffffc" + "00000000")
    assert req.payload == (
        _name16("utun3")
        + addr
        + bytes(28)  # no destination: KAME allows one only with prefixlen 128
        + mask
        + (0x20).to_bytes(4, "little")  # IN6_IFF_NODAD
        + bytes(16)  # ia6t_expire, ia6t_preferred
        + b"\xff" * 8  # vltime, pltime infinite
    )
    assert req.what == "utun3 inet6 fdfe:dcba:9876::1 prefixlen 126"


@LP64
def test_inet6_slash_128_gets_a_destination() -> None:
    req = d.inet6_request("utun3", ipaddress.IPv6Interface("fd00::7/128"))
    c = in6_aliasreq.from_buffer_copy(req.payload)
    assert (c.ifra_dstaddr.sin6_len, c.ifra_dstaddr.sin6_family) == (28, 30)
    assert bytes(c.ifra_dstaddr.sin6_addr) == ipaddress.IPv6Address("fd00::8").packed
    assert bytes(c.ifra_prefixmask.sin6_addr) == b"\xff" * 16


def test_configure_requests_order() -> None:
    reqs = d.configure_requests("utun3", 1400, [V4, V6])
    assert [r.request for r in reqs] == [d.SIOCSIFMTU, d.SIOCAIFADDR, d.SIOCAIFADDR_IN6]


def test_up_request_keeps_flags_and_adds_iff_up() -> None:
    """IFF_POINTOPOINT|IFF_RUNNING|IFF_MULTICAST (0x8050) read back; 0x8051 written as the
    signed short ifru_flags."""
    get = d.flags_get_request("utun3")
    assert (get.request, get.payload) == (d.SIOCGIFFLAGS, _name16("utun3") + bytes(16))
    up = d.up_request("utun3", d.parse_flags(_name16("utun3") + b"\x50\x80" + bytes(14)))
    assert up.request == d.SIOCSIFFLAGS
    assert up.payload == _name16("utun3") + b"\x51\x80" + bytes(14)


@pytest.mark.parametrize("name", ["", "a" * 16])
def test_interface_name_length_checked(name: str) -> None:
    with pytest.raises(ValueError, match=r"1\.\.15 bytes"):
        d.mtu_request(name, 1500)


class RecordingIoctl:
    """Stands in for fcntl.ioctl: records (socket family, request, payload) and answers
    SIOCGIFFLAGS like a fresh utun."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[int, int, bytes]] = []
        self.fail_on = fail_on

    def __call__(self, fd: int, request: int, payload: bytes) -> bytes:
        probe = socket.socket(fileno=fd)
        family = probe.family
        probe.detach()
        self.calls.append((family, request, payload))
        if request == self.fail_on:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        if request == d.SIOCGIFFLAGS:
            return payload[:16] + b"\x50\x80" + bytes(14)
        return payload


def test_apply_requests_issues_everything_then_up() -> None:
    ioctl = RecordingIoctl()
    reqs = d.configure_requests("utun3", 1400, [V4, V6])
    d.apply_requests("utun3", reqs, ioctl=ioctl)
    assert ioctl.calls == [
        (socket.AF_INET, d.SIOCSIFMTU, reqs[0].payload),
        (socket.AF_INET, d.SIOCAIFADDR, reqs[1].payload),
        (socket.AF_INET6, d.SIOCAIFADDR_IN6, reqs[2].payload),
        (socket.AF_INET, d.SIOCGIFFLAGS, _name16("utun3") + bytes(16)),
        (socket.AF_INET, d.SIOCSIFFLAGS, _name16("utun3") + b"\x51\x80" + bytes(14)),
    ]


def test_apply_requests_error_names_the_step() -> None:
    ioctl = RecordingIoctl(fail_on=d.SIOCAIFADDR)
    with pytest.raises(DeviceError, match=r"ifconfig utun3 inet 172\.19\.0\.1 .*root needed"):
        d.apply_requests("utun3", d.configure_requests("utun3", 1400, [V4]), ioctl=ioctl)
    assert [c[1] for c in ioctl.calls] == [d.SIOCSIFMTU, d.SIOCAIFADDR]


@pytest.mark.skipif(
    sys.platform == "darwin",
    reason="this is macOS: opening is real here (the hosted row opens one as root)",
)
def test_open_utun_refuses_off_macos_after_checking_the_name() -> None:
    with pytest.raises(ValueError, match="utunN"):
        d.open_utun("ztun0")
    with pytest.raises(DeviceError, match="only on macOS"):
        d.open_utun("utun3")


# -- the 4-byte family framing, through a socketpair standing in for the control socket --


@pytest.fixture
def utun() -> Iterator[tuple[DarwinUtun, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    kernel.setblocking(False)
    dev = DarwinUtun(ours, name="utun3", index=9, mtu=1400)
    try:
        yield dev, kernel
    finally:
        dev.close()
        kernel.close()


def test_is_a_device_with_plain_packets(utun: tuple[DarwinUtun, socket.socket]) -> None:
    dev, _ = utun
    assert isinstance(dev, Device)
    assert (dev.name, dev.index, dev.mtu, dev.frame_header_len) == ("utun3", 9, 1400, 0)
    assert not os.get_blocking(dev.fileno())


@pytest.mark.parametrize(
    ("packet", "word"), [(PKT4, b"\x00\x00\x00\x02"), (PKT6, b"\x00\x00\x00\x1e")]
)
def test_write_prepends_the_family_word(
    utun: tuple[DarwinUtun, socket.socket], packet: bytes, word: bytes
) -> None:
    dev, kernel = utun
    assert dev.write(packet) == len(packet)
    assert kernel.recv(4096) == word + packet
    assert dev.write_frame(memoryview(bytearray(packet))) == len(packet)
    assert kernel.recv(4096) == word + packet


@pytest.mark.parametrize("bad", [b"", b"\x50" + PKT4[1:], b"\x00"])
def test_write_refuses_non_ip(utun: tuple[DarwinUtun, socket.socket], bad: bytes) -> None:
    dev, kernel = utun
    with pytest.raises(DeviceError) as info:
        dev.write(bad)
    assert info.value.errno == errno.EAFNOSUPPORT
    assert dev.errors["bad_version"] == 1
    with pytest.raises(BlockingIOError):
        kernel.recv(4096)


@pytest.mark.parametrize(
    ("packet", "word"), [(PKT4, b"\x00\x00\x00\x02"), (PKT6, b"\x00\x00\x00\x1e")]
)
def test_read_strips_the_family_word(
    utun: tuple[DarwinUtun, socket.socket], packet: bytes, word: bytes
) -> None:
    dev, kernel = utun
    kernel.send(word + packet)
    buf = memoryview(bytearray(b"\xa5" * 2048))
    n = dev.read_into(buf)
    assert n == len(packet) and buf[:n] == packet and buf[n] == 0xA5
    with pytest.raises(BlockingIOError):
        dev.read_into(buf)
    assert not dev.errors


def test_read_drops_and_counts_bad_frames(utun: tuple[DarwinUtun, socket.socket]) -> None:
    dev, kernel = utun
    kernel.send(b"\x02\x00\x00\x00" + PKT4)  # the family in the wrong byte order
    kernel.send(b"\x00\x00\x00\x07" + PKT4)  # an unknown family
    kernel.send(b"\x00\x00")  # shorter than the word
    kernel.send(b"\x00\x00\x00\x02")  # the word alone
    kernel.send(b"\x00\x00\x00\x02" + PKT4)
    buf = memoryview(bytearray(2048))
    assert dev.read_into(buf) == len(PKT4) and buf[: len(PKT4)] == PKT4
    assert dev.errors == {"bad_family": 2, "short_frame": 2}


def test_a_flood_of_bad_frames_yields_to_the_poll_loop(
    utun: tuple[DarwinUtun, socket.socket],
) -> None:
    dev, kernel = utun
    for _ in range(d.READ_SKIP_LIMIT + 1):
        kernel.send(b"\x00\x00\x00\x07" + PKT4)
    kernel.send(b"\x00\x00\x00\x02" + PKT4)
    buf = memoryview(bytearray(2048))
    with pytest.raises(BlockingIOError):
        dev.read_into(buf)
    assert dev.read_into(buf) == len(PKT4)
    assert dev.errors["bad_family"] == d.READ_SKIP_LIMIT + 1


def test_end_of_file_on_the_control_socket_is_a_vanished_device() -> None:
    """A 0-byte read from a readable utun socket: the device is gone (the kernel control
    socket reached end of file; a utun frame always carries its 4-byte family word). It
    was counted as a short frame until READ_SKIP_LIMIT, then BlockingIOError: the poll
    loop, seeing the socket readable again, spun. Now it is ENXIO, as a vanished Linux
    TUN's read errno is one the pump stops on (pump.FATAL_ERRNOS). Faked at the readv()
    boundary: a SOCK_SEQPACKET socketpair whose "kernel" end closed returns 0 as the
    control socket at end of file would."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev = DarwinUtun(ours, name="utun3")
    try:
        kernel.send(b"\x00\x00\x00\x02" + PKT4)
        kernel.close()
        buf = memoryview(bytearray(2048))
        assert dev.read_into(buf) == len(PKT4)  # what was queued is still read
        with pytest.raises(DeviceError) as info:
            dev.read_into(buf)
        assert info.value.errno == errno.ENXIO and info.value.errno in FATAL_ERRNOS
        assert "utun3" in str(info.value)
        assert not dev.errors  # not a short frame
    finally:
        dev.close()


def test_the_pump_stops_on_a_vanished_utun() -> None:
    """The real TunPump over a utun whose control socket reached end of file (faked as
    above): it reports the device failed once (on_fatal), and stops reading."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev = DarwinUtun(ours, name="utun3")
    loop = asyncio.new_event_loop()
    stats: Counter[str] = Counter()
    fatal = loop.create_future()
    pump = TunPump(
        dev,
        SystemStack(inet4=V4, inet6=V6),
        threading.Lock(),
        loop,
        lambda _datagrams: None,
        stats,
        on_fatal=lambda: fatal.set_result(None),
    )
    pump.start()
    try:
        kernel.close()
        loop.run_until_complete(asyncio.wait_for(fatal, 5.0))
        pump.join(5.0)
        assert not pump.is_alive()
        assert stats["tun_read_error"] == 1
    finally:
        pump.stop()
        loop.close()
        dev.close()


def test_close_is_idempotent(utun: tuple[DarwinUtun, socket.socket]) -> None:
    dev, _ = utun
    dev.close()
    dev.close()
    assert dev.fileno() == -1


@pytest.mark.parametrize(
    ("src", "dst", "word"),
    [
        ("172.19.0.1", "198.51.100.9", b"\x00\x00\x00\x02"),
        ("fdfe:dcba:9876::1", "2001:db8::9", b"\x00\x00\x00\x1e"),
    ],
)
def test_the_engine_pump_sees_plain_packets(
    utun: tuple[DarwinUtun, socket.socket], src: str, dst: str, word: bytes
) -> None:
    """The real TunPump and SystemStack over the utun framing: a ping from the "kernel"
    side is answered in place (write_frame of the buffer the pump read) and comes back
    with the family word in front -- the engine never saw the word."""
    dev, kernel = utun
    loop = asyncio.new_event_loop()
    stats: Counter[str] = Counter()
    stack = SystemStack(inet4=V4, inet6=V6)
    pump = TunPump(dev, stack, threading.Lock(), loop, lambda _datagrams: None, stats)
    pump.start()
    try:
        a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        kernel.send(word + bytes(build_icmp_echo(a, b, 7, 1, b"ping")))
        readable, _, _ = select.select([kernel], [], [], 5.0)
        assert readable, f"no reply; pump stats {dict(stats)}, device errors {dict(dev.errors)}"
        assert kernel.recv(4096) == word + bytes(build_icmp_echo(b, a, 7, 1, b"ping", reply=True))
    finally:
        pump.stop()
        loop.close()
    assert stats["tun_frames_in"] == 1 and not dev.errors
