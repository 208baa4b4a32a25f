"""Run a netlink job in a forked child, so the long-running ztun never imports pyroute2.

pyroute2 (with the asyncio machinery it brings) adds ~20 MiB of resident memory to a
process, and ztun needs netlink only at the edges: configuring the TUN, applying and
restoring routes. A child forked for the job inherits the descriptors and the namespace,
does it, hands back the result (or the exception) through a pipe, and exits -- taking
the memory with it. Fork is called only while ztun is single-threaded (before the TUN
pump starts, after it has stopped).
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ChildFailed(RuntimeError):
    """The child died or sent an exception that could not cross the pipe."""


def call_in_child(job: Callable[[], T]) -> T:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: do the job, report, leave without running parent cleanups
        status = 0
        try:
            os.close(read_end)
            if "ssl" in sys.modules and sys.modules["ssl"] is None:
                # `ztun run` keeps ssl out of itself (see ztun.cli); a short-lived child
                # may load it for the libraries its job imports (pyroute2 does).
                del sys.modules["ssl"]
            try:
                payload = pickle.dumps((True, job()))
            except BaseException as exc:
                try:
                    payload = pickle.dumps((False, _portable(exc)))
                except Exception:
                    payload = pickle.dumps((False, ChildFailed(f"{type(exc).__name__}: {exc}")))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"netlink child exited with status {status} and no answer")
    ok, value = pickle.loads(data)
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def _portable(exc: BaseException) -> BaseException:
    """An exception the parent can unpickle without importing the library that raised it
    (pyroute2's NetlinkError would drag pyroute2 -- and ssl -- into ztun's process):
    library exceptions become OSError with their errno, or RuntimeError."""
    module = type(exc).__module__.split(".")[0]
    if module in ("builtins", "ztun"):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return OSError(code, f"{os.strerror(code)} ({type(exc).__name__}: {exc})")
    return RuntimeError(f"{type(exc).__name__}: {exc}")
