"""macOS auto-route at the syscall boundary: every byte written to the PF_ROUTE socket.

MOCK NOTICE: there is no macOS kernel here, so the routing socket is a recording fake
(:class:`FakeRouteSocket`).  It decodes each message with its own reader written from
XNU's ``bsd/net/route.h`` (``struct rt_msghdr``, RTM_*/RTF_*/RTA_*), ``bsd/netinet/in.h``
(``struct sockaddr_in``), ``bsd/netinet6/in6.h`` (``struct sockaddr_in6``) and
``bsd/net/if_dl.h`` (``struct sockaddr_dl``) -- not with ztun's packers -- refuses any
malformed message as the kernel would (EINVAL), keeps a small routing table, and answers
RTM_GET with messages built the same independent way.  The expected messages in the
tests are spelled out field by field with the header offset of each.  The hosted macOS
CI row runs the same code against the real kernel.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from pathlib import Path

import pytest

from tests.unit.route.darwin_kernel import (
    EN0,
    GATEWAY,
    HDR_LEN,
    PID,
    RTA_DST,
    RTA_IFP,
    RTA_NETMASK,
    RTF_DONE,
    RTF_GATEWAY,
    RTF_HOST,
    RTF_STATIC,
    RTF_UP,
    RTF_WASCLONED,
    RTM_ADD,
    RTM_DELETE,
    RTM_GET,
    UTUN,
    Entry,
    FakeRouteSocket,
    Header,
    home_table,
    kernel_mask,
    mask4,
    message,
    sa_dl,
    sa_in,
    sa_in6,
)
from ztun.route import AutoRouteConfig, Journal, RoutePlanError
from ztun.route import darwin as d
from ztun.route.model import RouteError, SystemRoute

pytestmark = pytest.mark.macos

INET, INET6 = socket.AF_INET, socket.AF_INET6  # the host's numbers, as SystemRoute keeps them
V4 = ipaddress.IPv4Interface("172.19.0.1/30")
V6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")


@pytest.fixture
def sock() -> FakeRouteSocket:
    return FakeRouteSocket(home_table())


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "utun7.journal")


def routes(journal: Journal, sock: FakeRouteSocket) -> d.DarwinRoutes:
    changer = d.DarwinChanger(lambda: sock, pid=PID)
    return d.DarwinRoutes(journal, changer=changer, ifindex={"utun7": UTUN}.__getitem__)


def nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def ips(*texts: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return tuple(ipaddress.ip_address(t) for t in texts)


def cfg(**kw: object) -> AutoRouteConfig:
    base: dict[str, object] = {"device": "utun7", "tun_addresses": (V4,)}
    base.update(kw)
    return AutoRouteConfig(**base)  # type: ignore[arg-type]


# -- messages, byte for byte ------------------------------------------------------------


def test_get_message_best_match_bytes() -> None:
    """``route -n get 198.51.100.7``: RTA_DST + an empty RTA_IFP, no netmask."""
    raw = d.get_message(ipaddress.ip_address("198.51.100.7"), seq=3, pid=PID)
    assert raw == bytes.fromhex(
        "8000"  # rtm_msglen @0: 92 + 16 + 20 = 128
        "05" "04"  # rtm_version @2 = RTM_VERSION, rtm_type @3 = RTM_GET
        "0000" "0000"  # rtm_index @4 = 0, padding @6
        "01000000"  # rtm_flags @8 = RTF_UP
        "11000000"  # rtm_addrs @12 = RTA_DST | RTA_IFP
        "92100000"  # rtm_pid @16 = 4242
        "03000000"  # rtm_seq @20
        "00000000" "00000000" "00000000"  # rtm_errno @24, rtm_use @28, rtm_inits @32
        + "00" * 56  # rtm_rmx @36: struct rt_metrics, nothing set
        + "1002" "0000" "c6336407" + "00" * 8  # sockaddr_in: len 16, AF_INET, port, addr, zero
        + "1412" "0000" "00" "00" "00" "00" + "00" * 12  # sockaddr_dl: len 20, AF_LINK, index 0
    )  # fmt: skip


def test_get_message_exact_prefix_bytes() -> None:
    """``route -n get -net 0.0.0.0/1``: RTA_NETMASK between RTA_DST and RTA_IFP (bit order)."""
    raw = d.get_message(ipaddress.ip_network("0.0.0.0/1"), seq=1, pid=PID)
    hdr = Header.read(raw)
    assert (hdr.msglen, hdr.type, hdr.addrs) == (92 + 16 + 8 + 20, RTM_GET, 0x15)
    assert raw[92:108] == sa_in("0.0.0.0")
    assert raw[108:116] == bytes.fromhex("0502000080000000")  # mask 128.0.0.0: sin_len 5, +3 pad
    assert raw[116:136] == sa_dl(0)


def test_get_message_for_a_host_prefix_sends_no_netmask() -> None:
    """``route -n get -host 203.0.113.5``: a /32 is asked for as an address (RTA_DST +
    RTA_IFP, no RTA_NETMASK): XNU keeps host routes with no mask, so a lookup with a
    full mask could never find one (rn_lookup_args, bsd/net/radix.c)."""
    for net in ("203.0.113.5/32", "2001:db8::5/128"):
        network = ipaddress.ip_network(net)
        raw = d.get_message(network, seq=2, pid=PID)
        assert raw == d.get_message(network.network_address, seq=2, pid=PID)
        assert Header.read(raw).addrs == RTA_DST | RTA_IFP  # rtm_addrs @12


def test_the_fake_kernel_finds_no_host_route_with_a_full_mask(sock: FakeRouteSocket) -> None:
    """The fake behaves as XNU: a host route (RTF_HOST, no mask in the tree) is not
    found by an exact lookup with a /32 mask, and is reported without RTA_NETMASK."""
    host = "172.19.0.2"  # the utun's p2p destination: a host route in home_table()
    with_mask = message(
        Header(0, 5, RTM_GET, 0, RTF_UP, RTA_DST | RTA_NETMASK | RTA_IFP, PID, 1, 0),
        sa_in(host), mask4(32), sa_dl(0),
    )  # fmt: skip
    with pytest.raises(OSError) as err:
        sock.write(with_mask)
    assert err.value.errno == errno.ESRCH
    sock.noise = False
    sock.write(message(Header(0, 5, RTM_GET, 0, RTF_UP, RTA_DST | RTA_IFP, PID, 2, 0),
                       sa_in(host), sa_dl(0)))  # fmt: skip
    reply = Header.read(sock.replies[0])
    assert reply.flags & RTF_HOST and not reply.addrs & RTA_NETMASK


def test_a_host_route_is_found_only_as_a_host_route(sock: FakeRouteSocket) -> None:
    """An exact get of a /32 answers the host route, and None when only a broader route
    (here the default route) carries the address."""
    table = d.RouteTable(sock, pid=PID)
    found = table.get(ipaddress.ip_network("172.19.0.2/32"))
    assert found is not None and found.flags & RTF_HOST and found.index == UTUN
    assert table.get(ipaddress.ip_network("203.0.113.5/32")) is None
    best = table.get(ipaddress.ip_address("203.0.113.5"))
    assert best is not None and best.network == ipaddress.ip_network("0.0.0.0/0")


def test_add_via_ipv6_link_local_gateway_embeds_the_scope() -> None:
    """KAME: fe80::1 on interface 4 travels as fe80:4::1 with sin6_scope_id 0."""
    route = d.DarwinRoute(
        ipaddress.ip_network("2001:db8::/32"), EN0, ipaddress.ip_address("fe80::1")
    )
    raw = d.route_message(RTM_ADD, route, seq=7, pid=PID)
    hdr = Header.read(raw)
    assert hdr.flags == RTF_UP | RTF_STATIC | RTF_GATEWAY and hdr.index == EN0
    assert raw[92 + 28 : 92 + 56] == sa_in6("fe80:4::1", scope=0)
    assert raw[92 + 56 :] == sa_in6("ffff:ffff::")


def test_parse_reply_with_trimmed_mask_and_named_interface() -> None:
    reply = d.parse_message(
        message(
            Header(0, 5, RTM_GET, EN0, RTF_UP | RTF_GATEWAY | RTF_DONE, 0x17, PID, 5, 0),
            sa_in("0.0.0.0"), sa_in("192.168.1.1"), b"", sa_dl(EN0, "en0"),
        )
    )  # fmt: skip
    assert (reply.seq, reply.pid, reply.index, reply.prefixlen) == (5, PID, EN0, 0)
    assert reply.gateway == GATEWAY and reply.interface == d.LinkAddress(EN0, "en0")


def test_parse_reads_an_ipv6_mask_by_the_destination_family() -> None:
    """An RTM_GET answer for 2001:db8::/32 as XNU writes it: the netmask is the radix
    tree's (``rn_addmask``, bsd/net/radix.c: bytes 1..7 -- sin6_family @1, sin6_port
    @2, sin6_flowinfo @4 -- are 0xff) trimmed by ``rtm_scrub`` (bsd/net/route.c), so its
    own sa_family is 0xff and the mask is read by RTA_DST's family (AF_INET6: the mask
    starts at sin6_addr @8), as rtm_scrub does."""
    mask = (
        bytes([12])  # sin6_len @0: 8 + the 4 non-zero mask bytes
        + b"\xff" * 7  # sin6_family @1, sin6_port @2, sin6_flowinfo @4: rn_ones
        + b"\xff" * 4  # sin6_addr @8: /32, trailing zeros trimmed
    )
    assert kernel_mask(ipaddress.ip_network("2001:db8::/32")) == mask
    reply = d.parse_message(
        message(
            Header(0, 5, RTM_GET, EN0, RTF_UP | RTF_GATEWAY | RTF_DONE, 0x17, PID, 9, 0),
            sa_in6("2001:db8::"), sa_in6("fe80:4::1"), mask, sa_dl(EN0, "en0"),
        )
    )  # fmt: skip
    assert reply.prefixlen == 32
    assert reply.network == ipaddress.ip_network("2001:db8::/32")
    assert reply.gateway == ipaddress.ip_address("fe80::1")


def test_an_ipv6_exclude_route_is_found_and_deleted_on_restore(
    sock: FakeRouteSocket, journal: Journal
) -> None:
    """An IPv6 exclude kept on en0 (2001:db8:1::/48 via fe80::1) and the IPv6 halves:
    restore asks for each prefix exactly (RTM_GET with RTA_NETMASK), reads the answer's
    0xff-family mask as XNU writes it, and deletes all of them.  Read by the mask's own
    family, a /48 came back as a /80: every IPv6 route counted as gone and the exclude
    outlived ztun."""
    before = dict(sock.table)
    applier = routes(journal, sock)
    count = applier.apply(cfg(tun_addresses=(V4, V6), exclude=nets("2001:db8:1::/48")))
    assert count == 5 and ipaddress.ip_network("2001:db8:1::/48") in sock.table
    report = applier.restore()
    assert (report.removed, report.absent, report.kept) == (5, 0, 0)
    assert sock.table == before and not journal.exists()


def test_parse_refuses_a_short_message() -> None:
    with pytest.raises(ValueError, match="92"):
        d.parse_message(bytes(40))


# -- planning with RTM_GET --------------------------------------------------------------


def test_plan_keeps_the_proxy_on_the_original_gateway(
    sock: FakeRouteSocket, journal: Journal
) -> None:
    plan = routes(journal, sock).plan(cfg(proxy_addresses=ips("203.0.113.5", "127.0.0.1")))
    assert plan == [
        SystemRoute(INET, "203.0.113.5/32", "en0", EN0, "192.168.1.1"),
        SystemRoute(INET, "0.0.0.0/1", "utun7", UTUN),
        SystemRoute(INET, "128.0.0.0/1", "utun7", UTUN),
    ]
    gets = [Header.read(m) for m in sock.written]
    assert [(h.type, h.seq, h.addrs) for h in gets] == [(RTM_GET, 1, 0x11), (RTM_GET, 2, 0x11)]
    assert sock.written[1][92:108] == sa_in("127.0.0.1")  # asked, and lo0's /8 keeps it


def test_a_cloned_host_route_does_not_keep_the_proxy_off_the_tunnel(
    sock: FakeRouteSocket, journal: Journal
) -> None:
    """A TCP connection to the proxy made before ztun started left a host route XNU
    cloned from the default route (``rtrequest_common_locked``, bsd/net/route.c: the
    parent's gateway, RTF_HOST | RTF_WASCLONED, no RTF_STATIC), and RTM_GET for the
    proxy answers with it (rtm_flags @8).  Adding 0.0.0.0/1 deletes that clone
    (``rt_fixchange``), so it never keeps the proxy off the tunnel: the proxy still
    gets a static route of its own via the gateway the clone names.  Taken for a /32
    that already wins, it got none, and the proxy's traffic went into the utun."""
    proxy = ipaddress.ip_network("203.0.113.5/32")
    sock.table[proxy] = Entry(EN0, "en0", str(GATEWAY), cloned=True)
    sock.noise = False
    answer = d.RouteTable(sock, pid=PID).get(proxy.network_address)
    assert answer is not None and answer.flags & (RTF_WASCLONED | RTF_HOST | RTF_GATEWAY) == (
        RTF_WASCLONED | RTF_HOST | RTF_GATEWAY
    )
    applier = routes(journal, sock)
    applier.apply(cfg(proxy_addresses=(proxy.network_address,)))
    assert journal.read().intents[0] == SystemRoute(INET, str(proxy), "en0", EN0, "192.168.1.1")
    kept = sock.table[proxy]
    assert not kept.cloned and kept.gateway == "192.168.1.1" and kept.ifindex == EN0


def test_plan_ipv6_gateway_and_includes(sock: FakeRouteSocket, journal: Journal) -> None:
    plan = routes(journal, sock).plan(
        cfg(
            tun_addresses=(V4, V6),
            include=nets("198.51.100.0/24", "2001:db8::/32"),
            exclude=nets("198.51.100.128/25", "2001:db8:1::/48"),
        )
    )
    assert plan == [
        SystemRoute(INET, "198.51.100.128/25", "en0", EN0, "192.168.1.1"),
        SystemRoute(INET6, "2001:db8:1::/48", "en0", EN0, "fe80::1"),
        SystemRoute(INET, "198.51.100.0/24", "utun7", UTUN),
        SystemRoute(INET6, "2001:db8::/32", "utun7", UTUN),
    ]


def test_plan_refuses_an_exclude_the_tunnel_route_is_as_specific_as(
    sock: FakeRouteSocket, journal: Journal
) -> None:
    with pytest.raises(RoutePlanError, match="not more specific"):
        routes(journal, sock).plan(cfg(exclude=(ipaddress.ip_network("0.0.0.0/1"),)))


# -- apply / restore through the journal -------------------------------------------------


def test_apply_writes_exactly_these_messages_then_restore_undoes_them(
    sock: FakeRouteSocket, journal: Journal
) -> None:
    before = dict(sock.table)
    applier = routes(journal, sock)
    count = applier.apply(cfg(proxy_addresses=(ipaddress.ip_address("203.0.113.5"),)))
    assert count == 3 and sock.closed
    adds = sock.written[1:]
    assert adds == [
        message(
            Header(0, 5, RTM_ADD, EN0, RTF_UP | RTF_GATEWAY | RTF_HOST | RTF_STATIC, 3, PID, 2, 0),
            sa_in("203.0.113.5"), sa_in("192.168.1.1"),
        ),
        message(
            Header(0, 5, RTM_ADD, UTUN, RTF_UP | RTF_STATIC, 0x7, PID, 3, 0),
            sa_in("0.0.0.0"), sa_dl(UTUN), mask4(1),
        ),
        message(
            Header(0, 5, RTM_ADD, UTUN, RTF_UP | RTF_STATIC, 0x7, PID, 4, 0),
            sa_in("128.0.0.0"), sa_dl(UTUN), mask4(1),
        ),
    ]  # fmt: skip
    state = journal.read()
    assert state.applied and state.done == {0, 1, 2} and state.device == "utun7"
    assert state.intents[0] == SystemRoute(INET, "203.0.113.5/32", "en0", EN0, "192.168.1.1")

    sock.written.clear()
    report = applier.restore()
    assert (report.removed, report.absent, report.kept) == (3, 0, 0)
    kinds = [(Header.read(m).type, m[92:108]) for m in sock.written]
    assert kinds == [
        (RTM_GET, sa_in("128.0.0.0")), (RTM_DELETE, sa_in("128.0.0.0")),
        (RTM_GET, sa_in("0.0.0.0")), (RTM_DELETE, sa_in("0.0.0.0")),
        (RTM_GET, sa_in("203.0.113.5")), (RTM_DELETE, sa_in("203.0.113.5")),
    ]  # fmt: skip
    assert Header.read(sock.written[0]).addrs == RTA_DST | RTA_NETMASK | RTA_IFP  # exact get
    assert Header.read(sock.written[4]).addrs == RTA_DST | RTA_IFP  # the host route's get
    assert sock.table == before and not journal.exists()


def test_an_ipv6_proxy_host_route_is_restored_too(sock: FakeRouteSocket, journal: Journal) -> None:
    """The /128 exclude of an IPv6 proxy: added with RTF_HOST, found again without a
    mask on restore and deleted (before the fix it outlived every stop)."""
    before = dict(sock.table)
    applier = routes(journal, sock)
    applier.apply(cfg(tun_addresses=(V4, V6), proxy_addresses=ips("2001:db8::5")))
    assert ipaddress.ip_network("2001:db8::5/128") in sock.table
    report = applier.restore()
    assert (report.removed, report.absent, report.kept) == (5, 0, 0)
    assert sock.table == before


def test_a_gone_host_route_is_absent_not_the_default_route(
    sock: FakeRouteSocket, journal: Journal
) -> None:
    """When the proxy's host route is gone, the best match for its address is the
    default route via the same gateway: that is not the journaled route (no RTF_HOST),
    so nothing is deleted."""
    applier = routes(journal, sock)
    applier.apply(cfg(proxy_addresses=ips("203.0.113.5")))
    del sock.table[ipaddress.ip_network("203.0.113.5/32")]
    sock.written.clear()
    report = applier.restore()
    assert (report.removed, report.absent) == (2, 1)
    deletes = [m[92:108] for m in sock.written if Header.read(m).type == RTM_DELETE]
    assert sa_in("203.0.113.5") not in deletes
    assert ipaddress.ip_network("0.0.0.0/0") in sock.table


def test_restore_leaves_what_is_not_ours_and_counts_what_is_gone(
    sock: FakeRouteSocket, journal: Journal
) -> None:
    applier = routes(journal, sock)
    applier.apply(cfg(proxy_addresses=(ipaddress.ip_address("203.0.113.5"),)))
    # The utun went away (its routes with it) and someone re-pointed the proxy route.
    del sock.table[ipaddress.ip_network("0.0.0.0/1")]
    del sock.table[ipaddress.ip_network("128.0.0.0/1")]
    sock.table[ipaddress.ip_network("203.0.113.5/32")] = Entry(EN0, "en0", "192.168.1.254")
    report = applier.restore()
    assert (report.removed, report.absent) == (0, 3)
    assert RTM_DELETE not in [Header.read(m).type for m in sock.written[4:]]
    assert sock.table[ipaddress.ip_network("203.0.113.5/32")].gateway == "192.168.1.254"


def test_a_preexisting_route_is_kept(sock: FakeRouteSocket, journal: Journal) -> None:
    sock.table[ipaddress.ip_network("128.0.0.0/1")] = Entry(UTUN, "utun7")
    applier = routes(journal, sock)
    applier.apply(cfg())
    assert journal.read().preexisting == {1}
    report = applier.restore()
    assert (report.removed, report.kept) == (1, 1)
    assert ipaddress.ip_network("128.0.0.0/1") in sock.table


def test_a_failure_half_way_rolls_back(sock: FakeRouteSocket, journal: Journal) -> None:
    real_write = sock.write

    def failing(raw: bytes) -> int:
        if Header.read(raw).type == RTM_ADD and raw[92:108] == sa_in("128.0.0.0"):
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return real_write(raw)

    sock.write = failing  # type: ignore[method-assign]
    before = dict(sock.table)
    with pytest.raises(RouteError, match=r"128\.0\.0\.0/1 -interface utun7: No buffer space"):
        routes(journal, sock).apply(cfg())
    assert sock.table == before and not journal.exists()


def test_recover_undoes_a_killed_run(sock: FakeRouteSocket, journal: Journal) -> None:
    """A SIGKILL after the first change: the journal lists two intents, one done."""
    journal.begin("utun7", None)
    first = SystemRoute(INET, "0.0.0.0/1", "utun7", UTUN)
    journal.intent(0, first)
    sock.table[ipaddress.ip_network("0.0.0.0/1")] = Entry(UTUN, "utun7")
    journal.done(0)
    journal.intent(1, SystemRoute(INET, "128.0.0.0/1", "utun7", UTUN))  # never made
    report = routes(journal, sock).recover()
    assert report is not None and (report.removed, report.absent) == (1, 1)
    assert ipaddress.ip_network("0.0.0.0/1") not in sock.table and not journal.exists()
    assert routes(journal, sock).recover() is None


def test_no_answer_is_an_error_not_a_hang(journal: Journal) -> None:
    class Silent(FakeRouteSocket):
        def _get(self, *args: object) -> int:
            return 0

    sock = Silent(home_table())
    with pytest.raises(RouteError, match="no answer from the kernel"):
        routes(journal, sock).plan(cfg(proxy_addresses=(ipaddress.ip_address("203.0.113.5"),)))


def test_the_routing_socket_is_macos_only() -> None:
    if os.uname().sysname == "Darwin":  # pragma: no cover - the hosted macOS row
        pytest.skip("this is macOS")
    with pytest.raises(OSError, match="only on macOS"):
        d.PfRouteSocket()


def test_header_layout_is_92_bytes() -> None:
    assert struct.calcsize("<HBBH2xiiiiiiI14I") == HDR_LEN == d.RT_MSGHDR.size
