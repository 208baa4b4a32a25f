"""macOS route-socket messages and Windows MIB_IPFORWARD_ROW2 rows, byte-exact against
the OS headers (XNU bsd/net/route.h, netinet/in.h, net/if_dl.h; Windows netioapi.h,
ws2ipdef.h, ifdef.h).  These build what the VMs will send; nothing here talks to a kernel."""

from __future__ import annotations

import ctypes
import ipaddress

import pytest

from ztun import win32
from ztun.route import darwin, windows
from ztun.route.darwin import RTM_ADD, RTM_DELETE, DarwinRoute, route_message


def test_darwin_struct_sizes() -> None:
    assert darwin.RT_METRICS.size == 56  # 10 x 4 + rmx_filler[4]
    assert darwin.RT_MSGHDR.size == 92
    assert darwin.SOCKADDR_IN.size == 16
    assert darwin.SOCKADDR_IN6.size == 28
    assert darwin.SOCKADDR_DL.size == 20


def test_darwin_header_field_offsets() -> None:
    """Pack a header with distinct values and find each at its C offset."""
    values = (0x1122, 5, 1, 0x3344, 0x05060708, 7, 1234, 99, 0, 0, 0, *([0] * 14))
    raw = darwin.RT_MSGHDR.pack(*values)
    assert raw[0:2] == b"\x22\x11"  # rtm_msglen @0
    assert raw[2] == 5 and raw[3] == 1  # rtm_version @2, rtm_type @3
    assert raw[4:6] == b"\x44\x33"  # rtm_index @4
    assert raw[6:8] == b"\x00\x00"  # padding before the int rtm_flags
    assert raw[8:12] == b"\x08\x07\x06\x05"  # rtm_flags @8
    assert raw[12:16] == (7).to_bytes(4, "little")  # rtm_addrs @12
    assert raw[16:20] == (1234).to_bytes(4, "little")  # rtm_pid @16
    assert raw[20:24] == (99).to_bytes(4, "little")  # rtm_seq @20
    assert raw[36:92] == bytes(56)  # rtm_rmx @36


def test_darwin_constants_match_route_h() -> None:
    assert (darwin.RTF_UP, darwin.RTF_GATEWAY, darwin.RTF_HOST) == (0x1, 0x2, 0x4)
    assert darwin.RTF_STATIC == 0x800 and darwin.RTF_IFSCOPE == 0x1000000
    assert darwin.RTM_VERSION == 5 and (darwin.RTA_DST, darwin.RTA_GATEWAY, darwin.RTA_NETMASK) == (
        1,
        2,
        4,
    )


@pytest.mark.parametrize(
    ("length", "space"), [(0, 4), (1, 4), (4, 4), (5, 8), (16, 16), (20, 20), (28, 28)]
)
def test_roundup32(length: int, space: int) -> None:
    assert darwin.roundup32(length) == space


def test_known_message_half_default_into_utun() -> None:
    """RTM_ADD 0.0.0.0/1 -interface (index 7), seq 1: header, sockaddr_in dst,
    sockaddr_dl gateway, netmask trimmed to 5 bytes and rounded up to 8."""
    msg = route_message(RTM_ADD, DarwinRoute(ipaddress.ip_network("0.0.0.0/1"), 7), seq=1)
    expected = bytes.fromhex(
        "8800"  # rtm_msglen 136
        "05"
        "01"  # RTM_VERSION, RTM_ADD
        "0700"
        "0000"  # rtm_index 7, pad
        "01080000"  # RTF_UP | RTF_STATIC
        "07000000"  # RTA_DST | RTA_GATEWAY | RTA_NETMASK
        "00000000"
        "01000000"
        "00000000"
        "00000000"
        "00000000"  # pid, seq, errno, use, inits
        + "00"
        * 56  # rt_metrics
        + "1002"
        "0000"
        "00000000"
        "0000000000000000"  # sockaddr_in 0.0.0.0
         + "1412"
        "0700"
        "00"
        "00"
        "00"
        "00"
        + "00"
        * 12  # sockaddr_dl index 7
        + "0502000080"
        "000000"  # netmask 128.0.0.0, sin_len 5, ROUNDUP32 -> 8
    )
    assert msg == expected


def test_known_message_proxy_host_route_via_gateway_ifscope() -> None:
    route = DarwinRoute(
        ipaddress.ip_network("198.51.100.7/32"),
        4,
        ipaddress.ip_address("192.168.1.1"),
        ifscope=True,
    )
    msg = route_message(RTM_DELETE, route, seq=0x01020304, pid=77)
    assert len(msg) == 92 + 16 + 16
    assert msg[:4] == bytes.fromhex("7c000502")
    flags = int.from_bytes(msg[8:12], "little")
    assert (
        flags
        == darwin.RTF_UP
        | darwin.RTF_STATIC
        | darwin.RTF_GATEWAY
        | darwin.RTF_HOST
        | darwin.RTF_IFSCOPE
    )
    assert int.from_bytes(msg[12:16], "little") == 3  # host route: no netmask
    assert msg[16:24] == bytes.fromhex("4d00000004030201")
    assert msg[92:] == bytes.fromhex("10020000c6336407" + "00" * 8 + "10020000c0a80101" + "00" * 8)


def test_ipv6_netmask_and_sockaddr() -> None:
    msg = route_message(RTM_ADD, DarwinRoute(ipaddress.ip_network("8000::/1"), 9), seq=2)
    assert len(msg) == 92 + 28 + 20 + 28
    dst = msg[92:120]
    assert dst[:2] == bytes([28, 30]) and dst[8:24] == bytes.fromhex("80" + "00" * 15)
    mask = msg[140:168]
    assert mask[:2] == bytes([28, 30]) and mask[8:24] == bytes.fromhex("80" + "00" * 15)


def test_zero_length_netmask_takes_four_bytes() -> None:
    msg = route_message(RTM_ADD, DarwinRoute(ipaddress.ip_network("0.0.0.0/0"), 3), seq=0)
    assert len(msg) == 92 + 16 + 20 + 4 and msg[-4:] == bytes(4)


# -- Windows --------------------------------------------------------------------------


def test_windows_sizes() -> None:
    assert ctypes.sizeof(win32.NET_LUID) == 8
    assert ctypes.sizeof(win32.SOCKADDR_IN) == 16
    assert ctypes.sizeof(win32.SOCKADDR_IN6) == 28
    assert ctypes.sizeof(win32.SOCKADDR_INET) == 28
    assert ctypes.sizeof(windows.IP_ADDRESS_PREFIX) == 32
    assert ctypes.sizeof(windows.MIB_IPFORWARD_ROW2) == 104  # x64, netioapi.h


def test_windows_row_offsets() -> None:
    row = windows.MIB_IPFORWARD_ROW2
    offsets = {name: getattr(row, name).offset for name, *_ in row._fields_}
    assert offsets == {
        "InterfaceLuid": 0,
        "InterfaceIndex": 8,
        "DestinationPrefix": 12,
        "NextHop": 44,
        "SitePrefixLength": 72,
        "ValidLifetime": 76,
        "PreferredLifetime": 80,
        "Metric": 84,
        "Protocol": 88,
        "Loopback": 92,
        "AutoconfigureAddress": 93,
        "Publish": 94,
        "Immortal": 95,
        "Age": 96,
        "Origin": 100,
    }
    assert windows.IP_ADDRESS_PREFIX.PrefixLength.offset == 28
    assert (
        win32.SOCKADDR_IN6.sin6_addr.offset == 8 and win32.SOCKADDR_IN6.sin6_scope_id.offset == 24
    )


def test_known_row_half_default_on_wintun() -> None:
    """0.0.0.0/1 on-link on LUID (IfType 53 = IF_TYPE_PROP_VIRTUAL, index 1), ifindex 17."""
    row = windows.make_row(
        ipaddress.ip_network("0.0.0.0/1"),
        interface_luid=win32.NET_LUID.of(53, 1),
        interface_index=17,
    )
    expected = bytes.fromhex(
        "0000000100003500"  # InterfaceLuid: NetLuidIndex 1 << 24 | IfType 53 << 48
        "11000000"  # InterfaceIndex 17
        "0200"
        "0000"
        "00000000"
        + "00" * 8
        + "00" * 12  # Prefix: AF_INET 0.0.0.0 (union: 28)
        + "01"
        "000000"  # PrefixLength 1, padding
         + "0200"
        "0000"
        "00000000"
        + "00" * 8
        + "00" * 12  # NextHop 0.0.0.0: on-link
        + "00"
        "000000"  # SitePrefixLength, padding
         + "ffffffff"
        "ffffffff"  # Valid/PreferredLifetime: infinite
        + "00000000"  # Metric
        + "03000000"  # Protocol MIB_IPPROTO_NETMGMT
        + "00"
        "00"
        "00"
        "00"  # Loopback, AutoconfigureAddress, Publish, Immortal
         + "00000000"
        "00000000"  # Age, Origin NlroManual
    )
    assert bytes(row) == expected


def test_ipv6_row() -> None:
    row = windows.make_row(
        ipaddress.ip_network("2001:db8::/32"),
        interface_luid=win32.NET_LUID(0),
        interface_index=5,
        next_hop=ipaddress.ip_address("fe80::1"),
        metric=5,
    )
    raw = bytes(row)
    assert raw[12:14] == (23).to_bytes(2, "little")  # AF_INET6 on Windows is 23
    assert raw[20:36] == ipaddress.ip_address("2001:db8::").packed
    assert raw[40] == 32
    assert (
        raw[44:46] == (23).to_bytes(2, "little")
        and raw[52:68] == ipaddress.ip_address("fe80::1").packed
    )
    assert raw[84:88] == (5).to_bytes(4, "little")
