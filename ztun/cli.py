"""The `ztun` command: run, demo, cleanup.

Bad input (a flag, URL or CIDR) prints what is wrong and exits 2, before anything is
created; a runtime failure (no /dev/net/tun, proxy URL fine but device busy) exits 1.
The seed tool's short flags work as they did: `ztun -x socks5://h:p -i 10.0.0.1 -m 1500 -d`
is `ztun run ...`.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .options import DEFAULT_INET4, DEFAULT_INET6, RunOptions
from .rules.proxies import DEFAULT_PROXY

if TYPE_CHECKING:
    pass

log = logging.getLogger("ztun")

LOG_LEVELS = ("debug", "info", "warning", "error")


def _cidr(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """A TUN address; without a prefix it gets the smallest one with room for the hairpin."""
    try:
        if "/" not in text:
            ip = ipaddress.ip_address(text)
            text = f"{text}/{30 if ip.version == 4 else 126}"
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address or CIDR ({exc})") from None
    if getattr(iface, "scope_id", None) is not None:
        # ipaddress takes "fd00::1%eth0", but a TUN's address carries no zone (RFC 4007
        # sec. 11): the kernel would refuse it once the device exists.
        raise argparse.ArgumentTypeError(f"{text}: a TUN address takes no %zone")
    if iface.ip.is_link_local or iface.ip.is_multicast or iface.ip.is_loopback:
        raise argparse.ArgumentTypeError(
            f"{text}: a TUN address must be a unicast address usable without a scope "
            "(not link-local, loopback or multicast)"
        )
    limit = 30 if iface.version == 4 else 126
    if iface.network.prefixlen > limit:
        raise argparse.ArgumentTypeError(
            f"{text}: prefix /{iface.network.prefixlen} leaves no room for the NAT hairpin "
            f"peer; use /{limit} or shorter"
        )
    if iface.ip == iface.network.network_address or (
        iface.version == 4 and iface.ip == iface.network.broadcast_address
    ):
        raise argparse.ArgumentTypeError(
            f"{text}: the network or broadcast address cannot be the TUN's"
        )
    return iface


def _network(text: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR ({exc})") from None
    if getattr(network.network_address, "scope_id", None) is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: a route's prefix takes no %zone")
    return str(network)


def _bounded(kind: type, low: float, high: float, what: str):  # type: ignore[no-untyped-def]
    def parse(text: str):  # type: ignore[no-untyped-def]
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
        if not low <= value <= high:
            # Whole bounds in full: `:g` wrote the UDP session cap as 1.04858e+06.
            bounds = ", ".join(
                str(int(b)) if float(b).is_integer() else f"{b:g}" for b in (low, high)
            )
            raise argparse.ArgumentTypeError(f"{what} {text} is out of range [{bounds}]")
        return value

    return parse


def _netns_name(text: str) -> str:
    """A name under /run/netns, refused as `ip netns` refuses it (iproute2's
    invalid_name()): a '/' would open some other file as the namespace."""
    if not text or "/" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace name (one under /run/netns: no '/', not . or ..)"
        )
    return text


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not host.strip("[]")
        or not (port.isascii() and port.isdigit())  # int() also reads other scripts' digits
        or not 0 < int(port) < 65536
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9100 or [::1]:9100)"
        )
    return text


def _proxy_url(text: str) -> str:
    from .outbound import parse_outbound_url

    try:
        parse_outbound_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _udp_proxy_url(text: str) -> str:
    """--udp-proxy: an outbound that carries UDP (a proxy that cannot would refuse every
    UDP flow, DNS included, with nothing said at start-up)."""
    from .outbound import ProxyURL, parse_outbound_url

    try:
        spec = parse_outbound_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if isinstance(spec, ProxyURL) and not spec.udp_capable:
        raise argparse.ArgumentTypeError(
            f"{spec.label}: {spec.scheme}:// carries no UDP "
            "(use socks5://, socks5h://, direct:// or reject://)"
        )
    return text


def _device_url(text: str) -> str:
    from .tun.url import device_url_problem

    problem = device_url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ztun",
        description="ztun: send every TCP connection, UDP flow and ping through a proxy "
        "(SOCKS5, SOCKS4/4a, HTTP CONNECT) "
        "via a TUN device.",
    )
    parser.add_argument("--version", action="version", version=f"ztun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the tun2socks (default command)",
        description=(
            "Create the TUN device, carry its TCP/UDP/ICMP through the proxy, and remove the "
            "device on SIGINT/SIGTERM. Without --auto-route the routes are left alone (point "
            "them at the device yourself); with it, ztun installs policy routing into the TUN "
            "and restores it on exit."
        ),
    )
    run.add_argument(
        "--device",
        type=_device_url,
        default=None,
        metavar="URL",
        help="tun://NAME creates a TUN (default tun://ztun0); fd://N adopts an open TUN descriptor",
    )
    run.add_argument(
        "-x",
        "--proxy",
        type=_proxy_url,
        action="append",
        default=None,
        metavar="URL",
        help="socks5://[user:pass@]host:port, socks5h://, socks4://, socks4a://, "
        "http://[user:pass@]host:port (HTTP CONNECT, TCP only), direct:// or reject://; "
        "repeat it for a failover group (the group 'default'); "
        f"default {DEFAULT_PROXY}",
    )
    run.add_argument(
        "--udp-proxy",
        type=_udp_proxy_url,
        default=None,
        metavar="URL",
        help="a different outbound for the UDP of the group 'default' "
        "(default: its first UDP-capable proxy that is up)",
    )
    run.add_argument(
        "--fail-open",
        action="store_true",
        default=None,
        help="when every proxy of a group is down, send its flows direct instead of refusing them",
    )
    run.add_argument(
        "-i",
        "--tun-ip",
        "--address",
        dest="addresses",
        type=_cidr,
        action="append",
        metavar="CIDR",
        help="TUN address, repeatable for IPv4 and IPv6 "
        f"(default {DEFAULT_INET4} and {DEFAULT_INET6}); "
        "a bare address gets /30 (IPv4) or /126 (IPv6)",
    )
    run.add_argument(
        "-m",
        "--tun-mtu",
        "--mtu",
        dest="mtu",
        type=_bounded(int, 576, 65535, "MTU"),
        default=None,
        metavar="N",
        help="TUN MTU (default 1500)",
    )
    run.add_argument(
        "--udp-timeout",
        type=_bounded(float, 1, 86400, "UDP timeout"),
        default=60.0,
        metavar="S",
        help="idle seconds before a UDP session and its association are released "
        "(default %(default)g)",
    )
    run.add_argument(
        "--connect-timeout",
        type=_bounded(float, 0.1, 300, "connect timeout"),
        default=10.0,
        metavar="S",
        help="seconds to reach the proxy and get its reply (default %(default)g)",
    )
    run.add_argument(
        "--max-udp-sessions",
        type=_bounded(int, 0, 1 << 20, "max UDP sessions"),
        default=None,
        metavar="N",
        help="at most N UDP flows hold an association (descriptors); one more closes the "
        "least recently used (0: no limit; default: a quarter of the open-files limit, "
        "which ztun raises to the hard limit)",
    )
    run.add_argument(
        "--icmp",
        choices=("local", "direct", "reject"),
        default=None,
        help="what a ping gets: local (ztun answers; default), direct (sent from this host "
        "through an ICMP socket, kept out of the TUN by --fwmark/--interface; needs "
        "net.ipv4.ping_group_range), reject (ICMP unreachable, administratively prohibited)",
    )
    run.add_argument(
        "--netns",
        type=_netns_name,
        metavar="NAME",
        help="run inside the network namespace /run/netns/NAME",
    )
    run.add_argument(
        "--fwmark",
        type=_bounded(int, 1, 0xFFFFFFFF, "fwmark"),
        metavar="N",
        help="SO_MARK for ztun's own outbound sockets (for policy routing)",
    )
    run.add_argument(
        "--interface",
        dest="bind_interface",
        metavar="IFACE",
        help="bind outbound sockets to IFACE (SO_BINDTODEVICE)",
    )
    run.add_argument(
        "--no-offload",
        dest="offload",
        action="store_false",
        help="open the TUN without IFF_VNET_HDR/TSO (one MTU-sized packet per read)",
    )
    run.add_argument(
        "--no-kernel-nat",
        dest="kernel_nat",
        action="store_false",
        help="rewrite every TCP segment in ztun instead of in the kernel (Linux: by default "
        "an eBPF program on the TUN's egress carries a TCP flow after its SYN)",
    )
    run.add_argument(
        "--workers",
        type=_bounded(int, 1, 64, "workers"),
        default=1,
        metavar="N",
        help="worker processes, one per queue of a multi-queue TUN (Linux; default 1)",
    )
    run.add_argument(
        "--tun-thread",
        action="store_true",
        help="pump the TUN in a thread of its own instead of on the event loop (measured "
        "slower on 2 cores: the GIL hand-offs cost more than the overlap gains)",
    )
    run.add_argument(
        "--portable",
        action="store_true",
        help="use no OS-specific acceleration (no splice, offloads, UDP GSO; the TUN read "
        "by a thread): what ztun does on macOS and Windows, forced here to test it",
    )
    run.add_argument(
        "--relay",
        choices=("splice", "copy"),
        default="splice",
        help="how TCP bytes move between sockets: splice(2) through a pipe (default) or recv/send",
    )
    routing = run.add_argument_group("routing, DNS and rules")
    routing.add_argument(
        "--redirect",
        action="store_true",
        help="Linux fast path: nftables redirects this host's TCP bound for the TUN straight "
        "to ztun's listener (TCP bytes never cross the TUN); needs nftables",
    )
    routing.add_argument("--config", metavar="FILE", help="TOML config (flags override it)")
    routing.add_argument(
        "--auto-route",
        action="store_true",
        default=None,
        help="route everything into the TUN (policy routing; restored on exit and after a crash)",
    )
    routing.add_argument(
        "--strict-route",
        action="store_true",
        default=None,
        help="with --auto-route: block what would bypass the TUN instead of leaking it",
    )
    routing.add_argument(
        "--include",
        action="append",
        type=_network,
        metavar="CIDR",
        help="with --auto-route: route only these into the TUN (repeatable)",
    )
    routing.add_argument(
        "--exclude",
        action="append",
        type=_network,
        metavar="CIDR",
        help="with --auto-route: never route these into the TUN (repeatable)",
    )
    routing.add_argument(
        "--dns",
        choices=("off", "hijack", "fake-ip", "remote"),
        default=None,
        help="DNS to port 53: off (carried like any UDP), hijack (answered by ztun via the "
        "destination over TCP through the proxy), fake-ip (answered from a fake pool; the "
        "proxy resolves), remote (UDP and TCP queries sent to --dns-upstream over TCP "
        "through the proxy)",
    )
    routing.add_argument(
        "--dns-upstream", metavar="HOST:PORT", help="resolver for --dns remote (e.g. 1.1.1.1:53)"
    )
    routing.add_argument(
        "--sniff",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read TLS SNI / HTTP Host from a new connection's first bytes (bounded wait) so "
        "rules can match the domain and the CONNECT carries it (default off)",
    )
    observe = run.add_argument_group("control, metrics, logs and service")
    observe.add_argument(
        "--control",
        metavar="PATH",
        help="control socket for ztun status/flows/close/reload (default "
        "/run/ztun/DEVICE.sock; docs/control.md)",
    )
    observe.add_argument(
        "--metrics",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (docs/metrics.md)",
    )
    observe.add_argument(
        "--log-file", metavar="PATH", help="append log lines to PATH (reopened on SIGUSR1)"
    )
    observe.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log line format (default text)",
    )
    observe.add_argument(
        "--log-flows",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log one line per closed flow: addresses, domain, outbound, bytes, duration, "
        "why it ended (default off)",
    )
    observe.add_argument(
        "--pid-file", metavar="PATH", help="write ztun's pid to PATH while it runs"
    )
    _add_logging(run, default=None)

    demo = sub.add_parser(
        "demo",
        help="show ztun carrying TCP, UDP and ping in throwaway namespaces",
        description="Build client/proxy/server network namespaces, start a SOCKS5 server, "
        "run ztun in the client, send an HTTP download, a DNS query and a ping through it, "
        "print what flowed, and remove everything.",
    )
    demo.add_argument(
        "--size",
        type=_bounded(int, 1, 1 << 30, "size"),
        default=8 << 20,
        metavar="BYTES",
        help="size of the HTTP download (default %(default)s)",
    )
    demo.add_argument(
        "--socks",
        choices=("auto", "microsocks", "danted", "builtin"),
        default="auto",
        help="SOCKS5 server for TCP (auto: microsocks if installed, else built-in)",
    )
    _add_logging(demo)

    cleanup = sub.add_parser("cleanup", help="remove what a crashed ztun or demo left behind")
    _add_logging(cleanup)

    from .bench.cli import add_bench_parser

    _add_logging(add_bench_parser(sub))
    from .control.commands import add_control_parsers

    add_control_parsers(sub, _add_logging)
    return parser


def _add_logging(p: argparse.ArgumentParser, default: str | None = "info") -> None:
    p.add_argument(
        "--loglevel",
        "--log-level",
        dest="loglevel",
        choices=LOG_LEVELS,
        default=default,
        help="log level (default: the config file's log_level, else info)"
        if default is None
        else "log level (default %(default)s)",
    )
    p.add_argument("-d", "--debug", action="store_true", help="same as --loglevel debug")


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if args and args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
        args.insert(0, "run")
    return args


def _overrides(ns: argparse.Namespace) -> dict[str, object]:
    """Flags given on the command line, as dotted config keys (a flag beats the file)."""
    given: dict[str, object] = {}
    if ns.device is not None and ns.device.startswith("tun://"):
        given["device"] = ns.device
    if ns.addresses:
        given["addresses"] = [str(a) for a in ns.addresses]
    if ns.mtu is not None:
        given["mtu"] = ns.mtu
    if ns.bind_interface is not None:
        given["interface"] = ns.bind_interface
    if ns.icmp is not None:
        given["icmp"] = ns.icmp
    if ns.max_udp_sessions is not None:
        given["max_udp_sessions"] = ns.max_udp_sessions
    if ns.proxy:
        given["proxy"] = list(ns.proxy)
    for key, value in (
        ("route.auto", ns.auto_route),
        ("route.strict", ns.strict_route),
        ("route.include", ns.include),
        ("route.exclude", ns.exclude),
        ("dns.mode", ns.dns),
        ("dns.upstream", ns.dns_upstream),
        ("sniff.enabled", ns.sniff),
        ("control", ns.control),
        ("metrics", ns.metrics),
        ("log_file", ns.log_file),
        ("log_format", ns.log_format),
        ("log_flows", ns.log_flows),
        ("pid_file", ns.pid_file),
        ("log_level", "debug" if ns.debug else ns.loglevel),
        ("fail_open", ns.fail_open),
    ):
        if value is not None:
            given[key] = value
    return given


def _options(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> RunOptions:
    from .outbound.build import udp_proxy_clash
    from .rules import ConfigError, load_config

    overrides = _overrides(ns)
    try:
        config = load_config(ns.config, overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    except ValueError as exc:
        parser.error(f"{ns.config}: {exc}")
    proxies = config.all_proxies()
    clash = udp_proxy_clash(config, ns.udp_proxy)
    if clash is not None:
        parser.error(clash)
    addresses = tuple(config.addresses)
    v4 = [a for a in addresses if a.version == 4]
    v6 = [a for a in addresses if a.version == 6]
    if len(v4) > 1 or len(v6) > 1:
        parser.error("give at most one IPv4 and one IPv6 --address")
    for iface in addresses:
        try:
            _cidr(str(iface))
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    mtu = config.mtu
    if v6 and mtu < 1280:
        parser.error(
            f"MTU {mtu} is below IPv6's minimum of 1280; raise it or give only an IPv4 --address"
        )
    if config.icmp == "direct" and sys.platform == "win32":
        parser.error(
            "--icmp direct: Windows has no unprivileged ICMP sockets (its way to ping is "
            "IcmpSendEcho2 in iphlpapi, which ztun does not use); use --icmp local or reject"
        )
    device = ns.device or config.device
    if config.route.auto and not device.startswith("tun://"):
        parser.error(
            "--auto-route needs a tun:// device (ztun must know the interface it routes to)"
        )
    if config.route.auto:
        from .route.plan import RoutePlanError, validate_auto_route

        try:  # what every OS's planner refuses, said before anything is opened
            validate_auto_route(config.auto_route_config(()))
        except RoutePlanError as exc:
            parser.error(f"--auto-route: {exc}")
    if ns.workers > 1 and not (device.startswith("tun://") and sys.platform == "linux"):
        parser.error("--workers above 1 needs a Linux tun:// device (a multi-queue TUN)")
    if ns.redirect and sys.platform != "linux":
        parser.error("--redirect needs Linux (nftables sends the host's TCP to ztun there)")
    if ns.portable and (ns.workers > 1 or ns.redirect):
        parser.error(
            "--portable turns off Linux's accelerations, which --workers (a multi-queue "
            "TUN) and --redirect (nftables) are; drop one"
        )
    fwmark = ns.fwmark
    if fwmark is None and config.route.auto and sys.platform == "linux":
        # ztun's own sockets must bypass its policy routes. macOS and Windows have no
        # SO_MARK: there auto-route keeps the proxy off the tunnel by a route of its own.
        fwmark = config.route.fwmark
    return RunOptions(
        device=device,
        # The first proxy of the group `default` (the start-up line names what new flows
        # use instead: Config.default_outbound_summary).
        proxy=config.proxy or (proxies[0].url if proxies else DEFAULT_PROXY),
        udp_proxy=ns.udp_proxy,
        udp_timeout=ns.udp_timeout,
        connect_timeout=ns.connect_timeout,
        netns=ns.netns,
        fwmark=fwmark,
        offload=ns.offload,
        splice=ns.relay == "splice",
        redirect=ns.redirect,
        workers=ns.workers,
        tun_thread=ns.tun_thread,
        portable=ns.portable,
        kernel_nat=ns.kernel_nat,
        config=config,
        overrides=overrides,
    )


def setup_run_logging(opts: RunOptions) -> None:
    """The config's log settings (a flag beats the file, the file beats the default)."""
    from .logs import SETUP, LogSettings

    cfg = opts.config
    SETUP.apply(LogSettings(cfg.log_level, cfg.log_file, cfg.log_format, cfg.log_flows))


def setup_logging(ns: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(ns, "debug", False) else getattr(logging, ns.loglevel.upper())
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def cmd_run(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    opts = _options(ns, parser)
    try:
        setup_run_logging(opts)
    except OSError as exc:
        parser.error(f"log file {opts.config.log_file}: {exc.strerror or exc}")
    if opts.netns:
        from .netns import enter_netns

        try:
            enter_netns(opts.netns)
        except OSError as exc:
            log.error("cannot enter network namespace %r: %s", opts.netns, exc)
            return 1
    from .app import run

    return run(opts)


def main(argv: Sequence[str] | None = None) -> int:
    args = _normalise_argv(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        # ztun speaks no TLS, but asyncio imports ssl to offer it: that maps libssl and
        # libcrypto into a long-running process, 4 MiB of its idle footprint. A None
        # entry is the import system's documented "not available"; asyncio copes.
        # (Before parsing: checking --proxy imports the outbounds, and asyncio with them.)
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help()
        return 2
    if ns.command == "run":
        return cmd_run(ns, parser)
    setup_logging(ns)
    if ns.command == "demo":
        from .demo import run_demo

        return run_demo(size=ns.size, socks=ns.socks)
    if ns.command == "cleanup":
        from .cleanup import cleanup

        return cleanup()
    if ns.command == "bench":
        from .bench.cli import cmd_bench

        return cmd_bench(ns)
    if ns.command in ("status", "flows", "close", "reload"):
        from .control.commands import cmd_control

        return cmd_control(ns)
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
