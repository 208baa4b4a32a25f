"""`ztun run` assembled: options -> accelerations -> device -> routes -> engine, and
everything undone after.

Everything OS-specific is asked of `ztun.platform.current()` (docs/contracts.md §5);
this module only puts the pieces together, and nothing below it imports it.

Ordering matters for crash safety: the routes journal is recovered (a previous run that
was SIGKILLed) before anything new is made; routes go in only after the device is up,
with ztun's own sockets marked so they bypass them; on the way out routes are restored
before the device disappears.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from collections.abc import Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .options import RunOptions
from .platform import (
    Accelerations,
    DnsApplier,
    Platform,
    RouteApplier,
    UnsupportedPlatform,
    current,
)
from .role import WorkerRole
from .stack import hairpin_peer
from .tun import Device
from .tun.base import has_descriptor

if TYPE_CHECKING:
    from .kernelnat import KernelNat

log = logging.getLogger("ztun")


def _open_device(platform: Platform, opts: RunOptions, accel: Accelerations) -> Device | None:
    # pyroute2's synchronous API runs its own event loop: configure before ours starts.
    try:
        return platform.open_device(opts, accel)
    except Exception as exc:  # OSError, ValueError, pyroute2's NetlinkError (e.g. EEXIST)
        log.error("cannot open %s: %s", opts.device, exc)
        return None


def _granted(accel: Accelerations, device: Device) -> Accelerations:
    """What the open device allows: offloads only if its frames carry the header, and
    the reader thread for a device with no descriptor the loop could watch."""
    reader = accel.tun_reader if has_descriptor(device) else "thread"
    return replace(accel, vnet_hdr=device.frame_header_len > 0, tun_reader=reader)


def _dns_servers(opts: RunOptions) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Where a platform that sets the system resolver points it: an address routed into
    the TUN, whose port-53 queries ztun's DNS service answers (ztun.dnsflow)."""
    return tuple(hairpin_peer(a) for a in (opts.inet4, opts.inet6) if a is not None)


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    # The engine watches sockets with add_reader, which only selector loops offer
    # (Windows' default proactor loop does not); on Unix this is asyncio's default.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(coro)


# With --tun-thread the TUN pump thread and the event loop share the GIL; at CPython's
# default 5 ms switch interval a packet can wait that long for the other thread to yield,
# which shows up as connection-setup and request/response latency. 0.5 ms keeps the
# hand-off short.
SWITCH_INTERVAL = 0.0005


def _recover(
    platform: Platform, opts: RunOptions
) -> tuple[RouteApplier | None, DnsApplier | None] | None:
    """The route and DNS appliers this run needs, after undoing what a killed run left
    in the device's journal -- whatever this run does: a run without --auto-route or
    --dns must not leave a killed run's routes or resolver in place. None (logged) when
    this run must not start."""
    from .cleanup import undo_journal
    from .dns import DnsMode
    from .route import Journal

    cfg = opts.config
    journal = Journal(platform.journal_path(cfg.device_name))
    try:
        routes = platform.routes(journal) if cfg.route.auto else None
        dns = platform.dns(journal) if cfg.dns.mode is not DnsMode.OFF else None
    except UnsupportedPlatform as exc:
        log.error("%s", exc)
        return None
    if not journal.exists():
        return routes, dns
    owner = platform.live_owner(journal)
    if owner is not None:
        # Recovering now would strip a running ztun's routes: its traffic would
        # silently go around the tunnel.
        log.error(
            "another ztun (pid %d) is routing through %s in this namespace; stop it first",
            owner,
            cfg.device_name,
        )
        return None
    report, failed = undo_journal(platform, journal)
    if failed:
        log.error("cannot undo what an earlier run left in %s: %s", journal.path, "; ".join(failed))
        return None
    log.warning("restored routes left by a previous run: %s", report)
    return routes, dns


def _undo(
    kernel_nat: KernelNat | None,
    dns: DnsApplier | None,
    routes: RouteApplier | None,
    device: Device,
) -> list[str]:
    """Everything the run set up, undone step by step: one step failing does not keep
    the others from running (a resolver left set must not also leave the routes and
    the device). What failed, as logged."""
    failed: list[str] = []
    if kernel_nat is not None:
        _stop_kernel_nat(kernel_nat)
    if dns is not None:
        try:
            dns.restore()
            log.info("DNS restored")
        except Exception as exc:  # an OS's error of any kind: the rest must still run
            failed.append(f"DNS not restored: {exc}")
    if routes is not None:
        try:
            log.info("auto-route restored: %s", routes.restore())
        except Exception as exc:
            failed.append(f"auto-route not restored: {exc}")
    try:
        device.close()
    except Exception as exc:
        failed.append(f"{device.name} not closed: {exc}")
    for what in failed:
        log.error("%s; `ztun cleanup` tries again", what)
    return failed


def run(opts: RunOptions) -> int:
    from .outbound.build import proxy_endpoints

    platform = current()
    sys.setswitchinterval(SWITCH_INTERVAL)
    _raise_open_files_limit()
    accel = platform.probe(opts)
    appliers = _recover(platform, opts)
    if appliers is None:
        return 1
    routes, dns = appliers
    device = _open_device(platform, opts, accel)
    if device is None:
        return 1
    accel = _granted(accel, device)
    kernel_nat, accel = _start_kernel_nat(platform, accel, device)
    log.info("accelerations: %s", accel.describe())
    proxies = proxy_endpoints(opts)  # every proxy's address, resolved
    try:
        code = _set_up(routes, dns, opts, proxies, device.name)
        if not code:
            code = _carry(opts, platform, accel, device, frozenset(proxies), kernel_nat)
    finally:
        failed = _undo(kernel_nat, dns, routes, device)
    return code or (1 if failed else 0)


def _carry(
    opts: RunOptions,
    platform: Platform,
    accel: Accelerations,
    device: Device,
    endpoints: frozenset[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
    kernel_nat: KernelNat | None,
) -> int:
    """Serve until stopped: one engine, or a worker per queue."""
    if accel.multi_queue:
        from .workers import run_workers

        return run_workers(
            opts,
            device,
            lambda queue, role: _run_async(
                _serve(opts, platform, accel, queue, endpoints, role, kernel_nat)
            ),
            accelerations=accel.as_dict(),
        )
    return _run_async(_serve(opts, platform, accel, device, endpoints, None, kernel_nat))


def _set_up(
    routes: RouteApplier | None,
    dns: DnsApplier | None,
    opts: RunOptions,
    proxies: tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], ...],
    device_name: str,
) -> int:
    """Routes, then the resolver; 0, or the exit status after saying what is wrong (2:
    the options cannot be planned on this system, e.g. an --exclude no more specific
    than the tunnel's route to it; 1: the system refused, and the applier rolled back)."""
    from .route import RoutePlanError

    step = "auto-route"
    try:
        if routes is not None:
            plan_input = opts.config.auto_route_config(tuple(a for a, _ in proxies), device_name)
            count = routes.apply(plan_input)
            log.info("auto-route: %d rules/routes applied", count)
        step = "--dns"
        if dns is not None:
            dns.apply(_dns_servers(opts))
    except RoutePlanError as exc:
        log.error("auto-route: %s", exc)
        return 2
    except (RuntimeError, OSError, NotImplementedError) as exc:  # RouteError, ChildFailed, ...
        log.error("cannot set up %s: %s", step, exc)
        return 1
    return 0


def _raise_open_files_limit() -> None:
    """Before anything opens (workers inherit it): every flow holds descriptors."""
    from .limits import raise_open_files_limit

    raise_open_files_limit()


def _udp_flow_limit(opts: RunOptions) -> int:
    """--max-udp-sessions, else a share of the open-files limit (ztun.limits)."""
    from .limits import open_files_limit, udp_flow_limit

    if opts.config.max_udp_sessions is not None:
        return opts.config.max_udp_sessions
    open_files = open_files_limit()
    limit = udp_flow_limit(open_files)
    if limit:
        log.info("at most %d UDP flows hold an association (open files limit %s; "
                 "--max-udp-sessions to choose)", limit, open_files)  # fmt: skip
    return limit


def _start_kernel_nat(
    platform: Platform, accel: Accelerations, device: Device
) -> tuple[KernelNat | None, Accelerations]:
    """The kernel NAT when asked for and possible; else the stack rewrites every TCP
    segment (the accelerations line then says kernel_nat=off, and this why)."""
    if not accel.kernel_nat:
        return None, accel
    try:
        return platform.start_kernel_nat(device), accel
    except (UnsupportedPlatform, OSError, RuntimeError) as exc:  # RuntimeError: ChildFailed
        log.warning("kernel NAT unavailable, TCP is rewritten by ztun's stack: %s", exc)
        return None, replace(accel, kernel_nat=False)


def _stop_kernel_nat(kernel_nat: KernelNat) -> None:
    try:
        kernel_nat.stop()
    except (OSError, RuntimeError) as exc:
        log.warning("kernel NAT: program not detached: %s", exc)


def _build_dns(opts: RunOptions, role: WorkerRole):  # type: ignore[no-untyped-def]
    from .dns import DnsMode

    cfg = opts.config.dns
    if cfg.mode is DnsMode.OFF or (cfg.mode is DnsMode.FAKE_IP and not role.primary):
        # Fake-IP queries and flows are steered to worker 0, which alone holds the pool.
        return None, None
    from .dns import DnsHandler, load_pool  # dnslib and secrets: only when DNS is on

    pool = None
    if cfg.mode is DnsMode.FAKE_IP:
        # A family the TUN has no address of gets no fake addresses (NOERROR, no data): an
        # app would connect to them around the tunnel, or not at all.
        v4 = cfg.fake_ip_range if opts.inet4 is not None else None
        v6 = cfg.fake_ip6_range if opts.inet6 is not None else None
        pool = load_pool(cfg.state_file, v4, v6)
    handler = DnsHandler(cfg.mode, pool=pool, upstream=cfg.upstream, fake_ttl=cfg.fake_ip_ttl)
    return handler, pool


async def _serve(
    opts: RunOptions,
    platform: Platform,
    accel: Accelerations,
    device: Device,
    proxy_endpoints: frozenset[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
    role: WorkerRole | None = None,
    kernel_nat: KernelNat | None = None,
) -> int:
    """`kernel_nat`: started by `run` (before any worker forks: each follows its own
    stack with the inherited maps)."""
    role = role or WorkerRole()
    from .engine import Engine
    from .outbound.build import build_outbounds
    from .router import Router
    from .stack import IcmpMode, SystemStack

    dns, pool = _build_dns(opts, role)
    cfg = opts.config
    if cfg.icmp == "direct":
        from .icmp_direct import check

        try:
            check(tuple(v for v, a in ((4, opts.inet4), (6, opts.inet6)) if a is not None))
        except OSError as exc:
            log.error("%s", exc.strerror)
            return 1
    router = Router(
        outbounds=build_outbounds(opts),  # proxies, groups (probing), direct, reject
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
        mtu=device.mtu,
        icmp=IcmpMode(cfg.icmp),
    )
    if kernel_nat is not None:
        kernel_nat.follow(stack)
    engine = Engine(
        device,
        stack,
        router,
        connect_timeout=opts.connect_timeout,
        splice=accel.splice,
        udp_gso=accel.udp_gso,
        dns=dns,
        # A worker handed no redirect listeners takes no redirected connections.
        redirect=accel.redirect and (role.alone or bool(role.redirect_listeners)),
        redirect_listeners=role.redirect_listeners,
        tun_thread=accel.tun_reader == "thread",
        max_udp_sessions=_udp_flow_limit(opts),
        fwmark=opts.fwmark,
        bind_interface=opts.bind_interface,
        kernel_nat=kernel_nat,
    )
    engine.start()
    from .instance import Instance, InstanceError

    instance = Instance(
        opts,
        engine,
        device_name=device.name,
        accelerations=accel.as_dict(),
        control_channel=role.control_channel,
    )
    try:
        try:
            await instance.start()
        except InstanceError as exc:
            log.error("%s", exc)
            return 1
        return await _run_engine(opts, platform, accel, device, engine, pool, role, instance)
    finally:
        await instance.close()
        engine.stop()
        if accel.redirect and role.alone:  # else the parent owns the nftables table
            platform.remove_redirect(device.name)
        log.info("ztun stopped stats=%s", engine.snapshot_json())


async def _run_engine(
    opts: RunOptions,
    platform: Platform,
    accel: Accelerations,
    device: Device,
    engine: Any,
    pool: Any,
    role: WorkerRole,
    instance: Any,
) -> int:
    from .dns import SAVE_INTERVAL, save_pool

    cfg = opts.config
    loop = asyncio.get_running_loop()
    if accel.redirect and engine.redirect_port is not None and role.alone:
        from .redirect import RedirectError

        try:
            platform.install_redirect(device.name, engine.redirect_port)
        except (RedirectError, UnsupportedPlatform, OSError, ValueError) as exc:
            log.error("%s", exc)
            return 1
    platform.stop_on_signals(loop, engine.stop)  # SIGHUP reloads (ztun.instance)

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
        cfg.default_outbound_summary(),
        cfg.dns.mode,
        "on" if cfg.sniff.enabled else "off",
        "on" if cfg.route.auto else "off",
        f"on:{engine.redirect_port}" if accel.redirect else "off",
    )
    instance.ready()
    if role.on_ready is not None:
        role.on_ready()
    await engine.wait_stopped()
    if saver is not None:
        saver.cancel()
    if pool is not None:
        save("exit")
    return 1 if engine.failed else 0
