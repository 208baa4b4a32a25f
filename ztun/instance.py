"""A running engine's outside: its control endpoint, metrics endpoint, pid file, service
notifications, and the signals that steer it (SIGHUP: reload, SIGUSR1: reopen the log).

`app.py` makes one `Instance` per engine. Alone, the instance serves the control socket
(docs/control.md) and `--metrics` itself; as worker k of `--workers N` it serves only its
parent, over the socketpair the parent keeps (`role.control_channel`), and the parent
(`ztun.workers_control`) does the rest for all of them.

A reload (`ConfigReloader`) re-reads the file, lets `ztun.reload.plan_reload` decide, and
then `apply_to_engine` swaps what shapes new flows: the router's rules, sniffing and
outbounds (proxies and groups, rebuilt with fresh health), the DNS upstream, the per-flow
log hook. Open flows keep the outbound objects they hold, so they run on untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from . import __version__, service
from .control import CommandFailed, ControlServer, control_path
from .control.backends import LocalBackend
from .logs import SETUP, LogSettings, log_flow
from .options import RunOptions
from .reload import ReloadPlan, plan_reload
from .rules import Config, ConfigError, load_config

log = logging.getLogger("ztun")


class InstanceError(Exception):
    """The instance cannot start (its control path or metrics port is taken, ...)."""


def log_settings(config: Config) -> LogSettings:
    return LogSettings(config.log_level, config.log_file, config.log_format, config.log_flows)


def instance_info(
    device: str, started: float, workers: int, control: str | None, config: str | None
) -> dict[str, Any]:
    """The status reply's `instance` (docs/control.md)."""
    return {
        "device": device,
        "pid": os.getpid(),
        "started": started,
        "uptime_s": round(time.time() - started, 3),
        "version": __version__,
        "platform": sys.platform,
        "workers": workers,
        "control": control,
        "config": config,
    }


class ConfigReloader:
    """Re-reads the config file and applies what a reload may change.

    `apply(new, plan)` installs the new config's effect; `reload` raises CommandFailed
    (the reply's error) when the file is bad or the change needs a restart -- and then
    nothing was applied.
    """

    def __init__(self, opts: RunOptions, apply: Callable[[Config, ReloadPlan], None]) -> None:
        self.opts = opts
        self.current = opts.config
        self.apply = apply

    def read(self, text: str | None = None) -> tuple[Config, ReloadPlan]:
        path = self.current.source
        if path is None:
            raise CommandFailed("ztun was started without --config: there is no file to re-read")
        try:
            new = load_config(path, self.opts.overrides, text=text)
        except ConfigError as exc:
            raise CommandFailed(f"reload failed, the running config stays: {exc}") from None
        from .outbound.build import udp_proxy_clash

        clash = udp_proxy_clash(new, self.opts.udp_proxy)
        if clash is not None:  # as `ztun run` refuses it (build_outbounds would raise)
            raise CommandFailed(f"reload failed, the running config stays: {clash}")
        plan = plan_reload(self.current, new)
        if plan.refused:
            raise CommandFailed(plan.refusal())
        return new, plan

    def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        """The control command (`args["text"]`: the file as the parent of workers read it)."""
        text = args.get("text")
        new, plan = self.read(text if isinstance(text, str) else None)
        try:
            SETUP.apply(log_settings(new))
        except OSError as exc:
            raise CommandFailed(
                f"reload failed, the running config stays: log_file: {exc}"
            ) from None
        self.apply(new, plan)
        self.current = new
        log.info("%s", plan.summary())
        return {"message": plan.summary(), "applied": list(plan.applies)}


#: What a reload rebuilds the outbounds for (the rules name them: they go in together).
OUTBOUND_KEYS = frozenset({"proxy_urls", "proxies", "groups", "fail_open"})


def apply_to_engine(engine: Any, opts: RunOptions, new: Config, plan: ReloadPlan) -> None:
    """Swap into a running engine what `plan` says applies (never touching open flows)."""
    router = engine.router
    applies = set(plan.applies)
    engine.flows.on_closed = log_flow if new.log_flows else None
    if "sniff" in applies:
        router.sniff_timeout = new.sniff.timeout if new.sniff.enabled else None
    if "dns.upstream" in applies and engine.dns is not None:
        engine.dns.handler.upstream = new.dns.upstream
    if applies & OUTBOUND_KEYS:
        from .outbound.build import OutboundSet, build_outbounds, proxy_endpoints

        new_opts = dataclasses.replace(opts, config=new)
        previous = router.source if isinstance(router.source, OutboundSet) else None
        old = router.reconfigure(build_outbounds(new_opts, previous=previous), new.rule_set())
        # The loop guard must know the new proxies (their flows must never enter the TUN).
        router.proxy_endpoints = frozenset(proxy_endpoints(new_opts))
        if engine.dns is not None:
            engine.dns.outbound = router.proxy_tcp
        close = getattr(old, "close", None)
        if close is not None:  # the old probers; open flows keep their outbounds
            asyncio.get_running_loop().create_task(close())
        engine.routes_changed()
    elif applies & {"rules", "default_outbound"}:
        router.reconfigure(None, new.rule_set())
        engine.routes_changed()


class Instance:
    """The control side of one engine (see the module docstring)."""

    def __init__(
        self,
        opts: RunOptions,
        engine: Any,
        *,
        device_name: str,
        accelerations: dict[str, Any],
        control_channel: Any = None,
    ) -> None:
        self.opts = opts
        self.engine = engine
        self.device_name = device_name
        self.accelerations = accelerations
        self.channel = control_channel  # set: a worker, answering its parent only
        self.started = time.time()
        self.path: str | None = None
        self.reloader = ConfigReloader(
            opts, lambda new, plan: apply_to_engine(engine, opts, new, plan)
        )
        self.server: ControlServer | None = None
        self.metrics: Any = None
        self.pid_file: service.PidFile | None = None
        engine.flows.on_closed = log_flow if opts.config.log_flows else None

    @property
    def alone(self) -> bool:
        return self.channel is None

    def status_base(self) -> dict[str, Any]:
        snapshot = self.engine.snapshot()
        counters = {**snapshot, "udp_sessions_active": len(self.engine.stack.udp)}
        return {
            "instance": instance_info(
                self.device_name, self.started, 1, self.path, self.reloader.current.source
            ),
            "accelerations": self.accelerations,
            "proxies": self.engine.router.health_snapshot(),
            "groups": self.engine.router.groups_snapshot(),
            "counters": counters,
        }

    async def start(self) -> None:
        """Serve the control endpoint (and metrics, pid file); InstanceError says why not."""
        loop = asyncio.get_running_loop()
        backend = LocalBackend(
            self.engine.flows,
            clock=loop.time,
            status_base=self.status_base,
            # Alone, a reload is the service's: systemd hears of it (a worker's is its
            # parent's part of one).
            reload=self.reload_command if self.alone else self.reloader.reload,
        )
        self.server = ControlServer(backend)
        self._signals(loop)
        if not self.alone:
            self.server.serve_channel(self.channel)
            return
        cfg = self.opts.config
        path = cfg.control or control_path(self.device_name)
        try:
            await self.server.listen(path)
        except OSError as exc:
            raise InstanceError(f"control socket {path}: {exc.strerror or exc}") from exc
        self.path = path
        if cfg.pid_file is not None:
            self.pid_file = service.PidFile(cfg.pid_file)
            try:
                self.pid_file.write()
            except OSError as exc:
                raise InstanceError(f"pid file {cfg.pid_file}: {exc.strerror or exc}") from exc
        where = ""
        if cfg.metrics is not None:
            from .metrics_server import MetricsServer

            self.metrics = MetricsServer(backend.metrics)
            try:
                host, port = await self.metrics.start(*cfg.metrics)
            except OSError as exc:
                raise InstanceError(f"metrics {cfg.metrics[0]}:{cfg.metrics[1]}: {exc}") from exc
            where = f" metrics=http://{_url_host(host)}:{port}/metrics"
        log.info("control %s%s", path, where)

    def _signals(self, loop: asyncio.AbstractEventLoop) -> None:
        sighup, sigusr1 = getattr(signal, "SIGHUP", None), getattr(signal, "SIGUSR1", None)
        with contextlib.suppress(NotImplementedError, RuntimeError):  # a loop without signals
            if sigusr1 is not None:
                loop.add_signal_handler(sigusr1, SETUP.reopen)
            if sighup is not None:
                if self.alone:
                    loop.add_signal_handler(sighup, self.reload_on_signal)
                else:  # the parent reloads its workers over their channels
                    loop.add_signal_handler(sighup, lambda: None)

    def reload_command(self, args: dict[str, Any]) -> dict[str, Any]:
        """`ztun reload` and SIGHUP: RELOADING=1, the reload, READY=1 (sd_notify(3))."""
        service.reloading()
        try:
            return self.reloader.reload(args)
        finally:
            service.ready()

    def reload_on_signal(self) -> None:
        try:
            self.reload_command({})
        except CommandFailed as exc:
            log.error("SIGHUP: %s", exc)

    def ready(self) -> None:
        if self.alone:
            service.ready(f"carrying {self.device_name}")

    async def close(self) -> None:
        if self.alone:
            service.stopping()
        if self.metrics is not None:
            self.metrics.close()
        if self.server is not None:
            await self.server.aclose()
        if self.pid_file is not None:
            self.pid_file.remove()
        SETUP.report_suppressed()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
