"""The parent of `--workers N` answering for all of its workers.

The parent's main thread is the supervisor (a select loop on the workers' pidfds), so the
control socket, the metrics endpoint and the reload run in a thread of their own, on an
asyncio loop, started only once every worker is forked (a fork copies no thread but the
caller, and this thread must not be half-copied into a worker). Each worker answers the
same protocol on its end of a socketpair the parent made before forking
(`WorkerRole.control_channel`); the parent's `WorkersBackend` asks each and merges.

A reload is decided once, here: the parent reads the file, plans it against its running
config, and only if it applies sends the same text to every worker, so all of them swap
to the same config (or none does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from typing import Any

from . import service
from .control import CommandFailed, ControlServer, Request, control_path
from .control.backends import WorkersBackend
from .control.client import Channel
from .instance import ConfigReloader, InstanceError, instance_info, log_settings
from .logs import SETUP
from .options import RunOptions
from .rules import ConfigError
from .rules.config import read_config_text

log = logging.getLogger("ztun")

START_TIMEOUT = 10.0


class ParentControl:
    def __init__(
        self,
        opts: RunOptions,
        device_name: str,
        channels: list[socket.socket],
        accelerations: dict[str, Any],
    ) -> None:
        self.opts = opts
        self.device_name = device_name
        self.sockets = channels
        self.accelerations = accelerations
        self.started = time.time()
        self.path: str | None = None
        self.reloader = ConfigReloader(opts, lambda _new, _plan: None)
        self.backend: WorkersBackend | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._up = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="ztun-control", daemon=True)

    def start(self) -> None:
        """Serve; InstanceError when the control socket, metrics port or pid file is
        taken (then nothing was left behind)."""
        self._thread.start()
        if not self._up.wait(START_TIMEOUT):
            raise InstanceError("the control thread did not start")
        if self._error is not None:
            self._thread.join(START_TIMEOUT)
            raise InstanceError(self._error)

    def _run(self) -> None:
        # Signals are the main thread's (the supervisor's): never handed to this one.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            asyncio.run(self._main())
        except Exception as exc:  # reported to start(), or logged
            log.exception("control thread failed")
            self._error = self._error or f"control: {exc}"
        finally:
            self._up.set()

    def status_base(self) -> dict[str, Any]:
        return {
            "instance": instance_info(
                self.device_name,
                self.started,
                len(self.sockets),
                self.path,
                self.reloader.current.source,
            ),
            "accelerations": self.accelerations,
        }

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        channels = [await Channel.over(sock) for sock in self.sockets]
        self.backend = WorkersBackend(channels, status_base=self.status_base, reload=self.reload)
        server = ControlServer(self.backend)
        metrics: Any = None
        pid_file: service.PidFile | None = None
        cfg = self.opts.config
        try:
            path = cfg.control or control_path(self.device_name)
            try:
                await server.listen(path)
            except OSError as exc:
                self._error = f"control socket {path}: {exc.strerror or exc}"
                return
            self.path = path
            if cfg.pid_file is not None:
                pid_file = service.PidFile(cfg.pid_file)
                try:
                    pid_file.write()
                except OSError as exc:
                    self._error = f"pid file {cfg.pid_file}: {exc.strerror or exc}"
                    return
            where = ""
            if cfg.metrics is not None:
                from .metrics_server import MetricsServer

                metrics = MetricsServer(self.backend.metrics)
                try:
                    host, port = await metrics.start(*cfg.metrics)
                except OSError as exc:
                    self._error = f"metrics {cfg.metrics[0]}:{cfg.metrics[1]}: {exc}"
                    return
                where = f" metrics=http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
            log.info("control %s%s", path, where)
            self._up.set()
            await self._stop.wait()
        finally:
            if metrics is not None:
                metrics.close()
            await server.aclose()
            for channel in channels:
                channel.close()
            if pid_file is not None:
                pid_file.remove()

    async def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        """`ztun reload` and SIGHUP: RELOADING=1, the reload, READY=1 (sd_notify(3))."""
        service.reloading()
        try:
            return await self._reload()
        finally:
            service.ready()

    async def _reload(self) -> dict[str, Any]:
        path = self.reloader.current.source
        if path is None:
            raise CommandFailed("ztun was started without --config: there is no file to re-read")
        try:
            text = read_config_text(path)
        except ConfigError as exc:
            raise CommandFailed(f"reload failed, the running config stays: {exc}") from None
        new, plan = self.reloader.read(text)
        assert self.backend is not None
        await self.backend.ask_all(Request("reload", {"text": text}))
        with contextlib.suppress(OSError):  # each worker has checked the log file already
            SETUP.apply(log_settings(new))
        self.reloader.current = new
        log.info("%s", plan.summary())
        return {"message": plan.summary(), "applied": list(plan.applies)}

    def reload_soon(self) -> None:
        """SIGHUP (called from the main thread's signal handler)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                loop.call_soon_threadsafe(lambda: loop.create_task(self._reload_on_signal()))

    async def _reload_on_signal(self) -> None:
        try:
            await self.reload({})
        except CommandFailed as exc:
            log.error("SIGHUP: %s", exc)

    def stop(self) -> None:
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(START_TIMEOUT)
