"""The `ztun` command: run, demo, cleanup.

Bad input (a flag, URL or CIDR) prints what is wrong and exits 2, before anything is
created; a runtime failure (no /dev/net/tun, proxy URL fine but device busy) exits 1.
The seed tool's short flags work as they did: `ztun -x socks5://h:p -i 10.0.0.1 -m 1500 -d`
is `ztun run ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .options import DEFAULT_INET4, DEFAULT_INET6, RunOptions

if TYPE_CHECKING:
    from .tun import Device

log = logging.getLogger("ztun")

LOG_LEVELS = ("debug", "info", "warning", "error")
SUBCOMMANDS = ("run", "demo", "cleanup", "bench")


def _cidr(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """A TUN address; without a prefix it gets the smallest one with room for the hairpin."""
    try:
        if "/" not in text:
            ip = ipaddress.ip_address(text)
            text = f"{text}/{30 if ip.version == 4 else 126}"
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address or CIDR ({exc})") from None
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


def _bounded(kind: type, low: float, high: float, what: str):  # type: ignore[no-untyped-def]
    def parse(text: str):  # type: ignore[no-untyped-def]
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} {text} is out of range [{low:g}, {high:g}]")
        return value

    return parse


def _proxy_url(text: str) -> str:
    from .outbound import parse_outbound_url

    try:
        parse_outbound_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _device_url(text: str) -> str:
    if text.startswith("tun://"):
        name = text[len("tun://") :]
        if not name or len(name.encode()) > 15 or "/" in name or " " in name:
            raise argparse.ArgumentTypeError(
                f"device {text!r}: tun://NAME needs a name of 1..15 bytes"
            )
        return text
    if text.startswith("fd://"):
        if not text[len("fd://") :].isdigit():
            raise argparse.ArgumentTypeError(f"device {text!r}: fd://N needs a descriptor number")
        return text
    raise argparse.ArgumentTypeError(f"device {text!r}: use tun://NAME or fd://N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ztun",
        description="ztun: send every TCP connection, UDP flow and ping through a SOCKS5 proxy "
        "via a TUN device.",
    )
    parser.add_argument("--version", action="version", version=f"ztun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the tun2socks (default command)",
        description=(
            "Create the TUN device, carry its TCP/UDP/ICMP through the proxy, and remove the "
            "device on SIGINT/SIGTERM. Routes are not changed: point routes at the device yourself."
        ),
    )
    run.add_argument(
        "--device",
        type=_device_url,
        default="tun://ztun0",
        metavar="URL",
        help="tun://NAME creates a TUN (default tun://ztun0); fd://N adopts an open TUN descriptor",
    )
    run.add_argument(
        "-x",
        "--proxy",
        type=_proxy_url,
        default="socks5://127.0.0.1:1080",
        metavar="URL",
        help="socks5://[user:pass@]host:port (or socks5h://, direct://, reject://); "
        "default %(default)s",
    )
    run.add_argument(
        "--udp-proxy",
        type=_proxy_url,
        default=None,
        metavar="URL",
        help="a different outbound for UDP (default: the --proxy)",
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
        default=1500,
        metavar="N",
        help="TUN MTU (default %(default)s)",
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
        "--netns", metavar="NAME", help="run inside the network namespace /run/netns/NAME"
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
        "--relay",
        choices=("splice", "copy"),
        default="splice",
        help="how TCP bytes move between sockets: splice(2) through a pipe (default) or recv/send",
    )
    _add_logging(run)

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
    return parser


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--loglevel", choices=LOG_LEVELS, default="info", help="log level (default %(default)s)"
    )
    p.add_argument("-d", "--debug", action="store_true", help="same as --loglevel debug")


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if args and args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
        args.insert(0, "run")
    return args


def _options(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> RunOptions:
    addresses = tuple(ns.addresses) if ns.addresses else (DEFAULT_INET4, DEFAULT_INET6)
    v4 = [a for a in addresses if a.version == 4]
    v6 = [a for a in addresses if a.version == 6]
    if len(v4) > 1 or len(v6) > 1:
        parser.error("give at most one IPv4 and one IPv6 --address")
    if v6 and ns.mtu < 1280:
        parser.error(
            f"MTU {ns.mtu} is below IPv6's minimum of 1280; raise it or give only an IPv4 --address"
        )
    return RunOptions(
        device=ns.device,
        proxy=ns.proxy,
        udp_proxy=ns.udp_proxy,
        addresses=addresses,
        mtu=ns.mtu,
        udp_timeout=ns.udp_timeout,
        connect_timeout=ns.connect_timeout,
        netns=ns.netns,
        fwmark=ns.fwmark,
        bind_interface=ns.bind_interface,
        offload=ns.offload,
        splice=ns.relay == "splice",
    )


def setup_logging(ns: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(ns, "debug", False) else getattr(logging, ns.loglevel.upper())
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


async def _serve(opts: RunOptions, device: Device) -> int:
    from .engine import Engine
    from .outbound import make_outbound
    from .stack import SystemStack

    tcp_outbound = make_outbound(
        opts.proxy,
        connect_timeout=opts.connect_timeout,
        fwmark=opts.fwmark,
        bind_interface=opts.bind_interface,
    )
    udp_outbound = (
        make_outbound(
            opts.udp_proxy,
            connect_timeout=opts.connect_timeout,
            fwmark=opts.fwmark,
            bind_interface=opts.bind_interface,
        )
        if opts.udp_proxy
        else tcp_outbound
    )
    stack = SystemStack(inet4=opts.inet4, inet6=opts.inet6, udp_timeout=opts.udp_timeout)
    try:
        engine = Engine(
            device,
            stack,
            tcp_outbound,
            udp_outbound,
            connect_timeout=opts.connect_timeout,
            splice=opts.splice,
        )
        engine.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, engine.stop)
        ports = engine.listen_ports()
        log.info(
            "ztun ready device=%s index=%d mtu=%d offload=%s addresses=%s listen=%s proxy=%s",
            device.name,
            device.index,
            device.mtu,
            "on" if device.frame_header_len else "off",
            ",".join(str(a) for a in opts.addresses),
            ",".join(f"v{v}:{p}" for v, p in ports.items()),
            _redacted(opts.proxy),
        )
        await engine.wait_stopped()
        log.info("ztun stopped stats=%s", engine.snapshot_json())
    finally:
        device.close()
    return 0


def _redacted(url: str) -> str:
    """The proxy URL for logs: the password never reaches a log file."""
    from .outbound import parse_outbound_url

    return str(parse_outbound_url(url))


def _open_device(opts: RunOptions) -> Device | None:
    # pyroute2's synchronous API runs its own event loop: configure the device before ours.
    from .tun import open_device

    try:
        return open_device(
            opts.device, mtu=opts.mtu, addresses=opts.addresses, offload=opts.offload
        )
    except (OSError, ValueError) as exc:
        log.error("cannot open %s: %s", opts.device, exc)
        return None


def cmd_run(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    opts = _options(ns, parser)
    setup_logging(ns)
    if opts.netns:
        from .netns import enter_netns

        try:
            enter_netns(opts.netns)
        except OSError as exc:
            log.error("cannot enter network namespace %r: %s", opts.netns, exc)
            return 1
    device = _open_device(opts)
    if device is None:
        return 1
    return asyncio.run(_serve(opts, device))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
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
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
