"""`ztun run` assembled: options -> device -> routes -> engine, and everything undone after.

Ordering matters for crash safety: the routes journal is recovered (a previous run that
was SIGKILLed) before anything new is made; routes go in only after the device is up,
with ztun's own sockets marked so they bypass them; on the way out routes are restored
before the device disappears.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from .options import RunOptions
from .tun import Device
from .workers import WorkerRole

log = logging.getLogger("ztun")

RUN_DIR = Path("/run/ztun")


def netns_id() -> int:
    """The inode of this process's network namespace: names a journal per namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def journal_path(device_name: str) -> Path:
    from .route import default_journal_path

    return default_journal_path(f"{device_name}_{netns_id()}", RUN_DIR)


def redacted(url: str) -> str:
    """The proxy URL for logs: the password never reaches a log file."""
    from .outbound import parse_outbound_url

    return str(parse_outbound_url(url))


def _proxy_addresses(
    url: str,
) -> tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], ...]:
    """The proxy's resolved addresses (to exclude from auto-route and to detect loops)."""
    from .outbound import ProxyURL, parse_outbound_url

    spec = parse_outbound_url(url)
    if not isinstance(spec, ProxyURL):
        return ()
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve proxy %s: %s", spec.host, exc)
        return ()
    return tuple(
        {(ipaddress.ip_address(str(info[4][0]).split("%")[0]), spec.port) for info in infos}
    )


def live_owner(journal: object) -> int | None:
    """The pid of a still-running ztun that wrote `journal` (None: none, or us)."""
    try:
        state = journal.read()  # type: ignore[attr-defined]
    except Exception:  # an unreadable journal is recover()'s to report
        return None
    pid = getattr(state, "pid", None)
    if not pid or pid == os.getpid():
        return None
    return pid if ztun_argv(pid) is not None else None  # a reused pid is not an owner


def ztun_argv(pid: int) -> list[bytes] | None:
    """The command line of `pid` if it is a live ztun process, else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    return argv if any(b"ztun" in arg for arg in argv) else None


def open_device(opts: RunOptions) -> Device | None:
    # pyroute2's synchronous API runs its own event loop: configure before ours starts.
    from .tun import open_device as open_url

    try:
        return open_url(
            opts.device,
            mtu=opts.mtu,
            addresses=opts.addresses,
            offload=opts.offload,
            multi_queue=opts.workers > 1,
        )
    except Exception as exc:  # OSError, ValueError, pyroute2's NetlinkError (e.g. EEXIST)
        log.error("cannot open %s: %s", opts.device, exc)
        return None


# With --tun-thread the TUN pump thread and the event loop share the GIL; at CPython's
# default 5 ms switch interval a packet can wait that long for the other thread to yield,
# which shows up as connection-setup and request/response latency. 0.5 ms keeps the
# hand-off short.
SWITCH_INTERVAL = 0.0005


def _route_job(what: str, journal: Any, plan: Any = None) -> Any:
    """Runs in a netlink child (ztun.forked): only there is pyroute2 imported."""
    from .route import linux

    if what == "apply":
        return linux.apply(plan, journal)
    return linux.recover(journal) if what == "recover" else linux.restore(journal)


def run(opts: RunOptions) -> int:
    from .forked import call_in_child  # netlink jobs run in children: no pyroute2 here

    sys.setswitchinterval(SWITCH_INTERVAL)
    journal = None
    if opts.config.route.auto:
        from .route import Journal

        journal = Journal(journal_path(opts.config.device_name))
        owner = live_owner(journal)
        if owner is not None:
            # Recovering now would strip a running ztun's routes: its traffic would
            # silently go around the tunnel.
            log.error(
                "another ztun (pid %d) is routing through %s in this namespace; stop it first",
                owner,
                opts.config.device_name,
            )
            return 1
        report = call_in_child(lambda: _route_job("recover", journal))
        if report is not None:
            log.warning("restored routes left by a previous run: %s", report)
    device = open_device(opts)
    if device is None:
        return 1
    proxies = _proxy_addresses(opts.proxy) + (
        _proxy_addresses(opts.udp_proxy) if opts.udp_proxy else ()
    )
    try:
        if journal is not None:
            from .route import plan_auto_route

            plan = plan_auto_route(opts.config.auto_route_config(tuple(a for a, _ in proxies)))
            call_in_child(lambda: _route_job("apply", journal, plan))
            log.info("auto-route: %d rules/routes applied (journal %s)", len(plan), journal.path)
        endpoints = frozenset(proxies)
        if opts.workers > 1:
            from .workers import run_workers

            return run_workers(
                opts,
                device,
                lambda queue, role: asyncio.run(_serve(opts, queue, endpoints, role)),
            )
        return asyncio.run(_serve(opts, device, endpoints))
    finally:
        if journal is not None:
            log.info(
                "auto-route restored: %s", call_in_child(lambda: _route_job("restore", journal))
            )
        device.close()


def _build_dns(opts: RunOptions, role: WorkerRole):  # type: ignore[no-untyped-def]
    from .dns import DnsMode

    cfg = opts.config.dns
    if cfg.mode is DnsMode.OFF or (cfg.mode is DnsMode.FAKE_IP and not role.primary):
        # Fake-IP queries and flows are steered to worker 0, which alone holds the pool.
        return None, None
    from .dns import DnsHandler, load_pool  # dnslib and secrets: only when DNS is on

    pool = None
    if cfg.mode is DnsMode.FAKE_IP:
        pool = load_pool(cfg.state_file, cfg.fake_ip_range, cfg.fake_ip6_range)
    handler = DnsHandler(cfg.mode, pool=pool, upstream=cfg.upstream, fake_ttl=cfg.fake_ip_ttl)
    return handler, pool


async def _serve(
    opts: RunOptions,
    device: Device,
    proxy_endpoints: frozenset[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
    role: WorkerRole | None = None,
) -> int:
    role = role or WorkerRole()
    from .engine import Engine
    from .outbound import DirectOutbound, make_outbound
    from .router import Router
    from .stack import SystemStack

    def outbound(url: str):  # type: ignore[no-untyped-def]
        return make_outbound(
            url,
            connect_timeout=opts.connect_timeout,
            fwmark=opts.fwmark,
            bind_interface=opts.bind_interface,
        )

    proxy_tcp = outbound(opts.proxy)
    proxy_udp = outbound(opts.udp_proxy) if opts.udp_proxy else proxy_tcp
    direct = DirectOutbound(
        connect_timeout=opts.connect_timeout, fwmark=opts.fwmark, bind_interface=opts.bind_interface
    )
    dns, pool = _build_dns(opts, role)
    cfg = opts.config
    router = Router(
        proxy_tcp=proxy_tcp,
        proxy_udp=proxy_udp,
        direct=direct,
        rules=cfg.rule_set(),
        pool=pool,
        sniff_timeout=cfg.sniff.timeout if cfg.sniff.enabled else None,
        proxy_endpoints=proxy_endpoints,
    )
    stack = SystemStack(
        inet4=opts.inet4,
        inet6=opts.inet6,
        udp_timeout=opts.udp_timeout,
        nat_shard=role.nat_shard,
    )
    engine = Engine(
        device,
        stack,
        router,
        connect_timeout=opts.connect_timeout,
        splice=opts.splice,
        dns=dns,
        # A worker handed no redirect listeners takes no redirected connections.
        redirect=opts.redirect and (role.alone or bool(role.redirect_listeners)),
        redirect_listeners=role.redirect_listeners,
        tun_thread=opts.tun_thread,
    )
    engine.start()
    try:
        return await _run_engine(opts, device, engine, pool, role)
    finally:
        engine.stop()
        if opts.redirect and role.alone:  # else the parent owns the nftables table
            from .redirect import remove

            remove(device.name)
        log.info("ztun stopped stats=%s", engine.snapshot_json())


async def _run_engine(
    opts: RunOptions, device: Device, engine: Any, pool: Any, role: WorkerRole
) -> int:
    from .dns import SAVE_INTERVAL, save_pool

    cfg = opts.config
    loop = asyncio.get_running_loop()
    if opts.redirect and engine.redirect_port is not None and role.alone:
        from .redirect import RedirectError, install

        try:
            install(device.name, engine.redirect_port)
        except (RedirectError, OSError, ValueError) as exc:
            log.error("%s", exc)
            return 1
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, engine.stop)

    def save(reason: str) -> None:
        try:
            save_pool(pool, cfg.dns.state_file)
        except OSError as exc:
            log.warning("fake-IP pool not saved (%s): %s", reason, exc)

    saver = None
    if pool is not None:

        def save_if_dirty() -> None:
            nonlocal saver
            if pool.dirty:
                save("periodic")
            saver = loop.call_later(SAVE_INTERVAL, save_if_dirty)

        saver = loop.call_later(SAVE_INTERVAL, save_if_dirty)
    log.info(
        "%s device=%s index=%d mtu=%d offload=%s addresses=%s listen=%s proxy=%s "
        "dns=%s sniff=%s auto_route=%s redirect=%s",
        "ztun ready" if role.alone else f"worker {role.index} ready",
        device.name,
        device.index,
        device.mtu,
        "on" if device.frame_header_len else "off",
        ",".join(str(a) for a in opts.addresses),
        ",".join(f"v{v}:{p}" for v, p in engine.listen_ports().items()),
        redacted(opts.proxy),
        cfg.dns.mode,
        "on" if cfg.sniff.enabled else "off",
        "on" if cfg.route.auto else "off",
        f"on:{engine.redirect_port}" if opts.redirect else "off",
    )
    if role.on_ready is not None:
        role.on_ready()
    await engine.wait_stopped()
    if saver is not None:
        saver.cancel()
    if pool is not None:
        save("exit")
    return 1 if engine.failed else 0
