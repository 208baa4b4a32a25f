"""The platform seam: what `ztun run` needs from an OS, in one interface.

`app.py` assembles a run from these calls and nothing else OS-specific: probe the
accelerations, open the device, apply (and later restore) the routes and DNS under a
journal, install the TCP redirect, hook the stop signals. Each OS module (`linux`,
`darwin`, `windows`) subclasses `Platform`; `ztun.platform.current()` picks one, once.

The generic parts live here so an OS module writes only what differs: opening a device
by URL (`ztun.tun.open_device` already dispatches by OS), journals named per device,
signals through the loop where it can and `signal.signal` where it cannot (Windows).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from ..kernelnat import KernelNat
    from ..options import RunOptions
    from ..route import AutoRouteConfig, Journal
    from ..route.model import RestoreReport
    from ..tun import Device

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TunReader = Literal["loop", "thread"]
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Accelerations:
    """Which OS-specific fast paths this run uses; every one has a portable fallback.

    - `splice`: TCP relayed socket -> pipe -> socket by splice(2) from a pool of pipe2
      pipes (Linux); else recv_into/send on one shared buffer (`ztun.relay`).
    - `vnet_hdr`: the TUN hands 64 KiB TSO super-packets with a virtio-net header
      (IFF_VNET_HDR); else one MTU-sized packet per read.
    - `multi_queue`: one TUN queue per worker process, steered by an eBPF program
      (`--workers`); else one queue.
    - `udp_gso`: the UDP uplink sends runs of equal datagrams in one UDP_SEGMENT
      sendmsg; else one sendmsg per datagram.
    - `redirect`: nftables sends this host's TCP for the TUN straight to ztun's
      listener (`--redirect`); else TCP takes the TUN like everything else.
    - `kernel_nat`: the hairpin NAT done by an eBPF program instead of the stack.
    - `tun_reader`: "loop" reads the TUN from the event loop (add_reader on its
      descriptor); "thread" from a thread of its own that waits on
      `Device.wait_readable` -- the only way for a device without a pollable
      descriptor (Wintun gives an event handle).
    """

    splice: bool = False
    vnet_hdr: bool = False
    multi_queue: bool = False
    udp_gso: bool = False
    redirect: bool = False
    kernel_nat: bool = False
    tun_reader: TunReader = "loop"

    def as_dict(self) -> dict[str, bool | str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """`splice=on vnet_hdr=off ... tun_reader=loop`: the start-up log line's body."""
        return " ".join(
            f"{name}={('on' if value else 'off') if isinstance(value, bool) else value}"
            for name, value in self.as_dict().items()
        )


#: `ztun run --portable`: nothing but what macOS and Windows offer too, and the TUN read
#: by the reader thread (the path a Wintun device must take), so Linux runs can prove it.
PORTABLE = Accelerations(tun_reader="thread")


class JournalScope(enum.Enum):
    """Whose is a journal found in the state directory (for `ztun cleanup`)."""

    HERE = "here"  # this host's (Linux: this network namespace's): restore it
    ELSEWHERE = "elsewhere"  # another live network namespace's: leave it
    GONE = "gone"  # its network namespace is gone, and its routes with it: delete it


class RouteApplier(Protocol):
    """Auto-route for one device under one journal (`Platform.routes`).

    Every change is journaled (fsync) before it is made; `restore` undoes exactly what
    the journal says was ours, newest first, and tolerates entries never applied."""

    def apply(self, cfg: AutoRouteConfig) -> int:
        """Plan the OS's routes for `cfg`, journal and apply them; the number of changes."""
        ...

    def restore(self) -> RestoreReport:
        """Undo what the journal holds, then remove it."""
        ...

    def recover(self) -> RestoreReport | None:
        """Undo what a killed run left (None: the journal is absent or empty)."""
        ...


class DnsApplier(Protocol):
    """The system resolver pointed at `servers` for `--dns` (macOS: the SystemConfiguration
    dynamic store; Windows: the interface's DNS servers), journaled like routes."""

    def apply(self, servers: Sequence[IPAddress]) -> None: ...

    def restore(self) -> None: ...


class UnsupportedPlatform(NotImplementedError):
    """This OS (or this OS module, not written yet) cannot do what was asked."""


class Platform(ABC):
    """One OS's side of `ztun run`. Subclasses set `name` and implement the abstract
    methods; the others have defaults that fit an OS with no namespaces and no extras."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def state_dir(self) -> Path:
        """Where journals and the control socket live (`/run/ztun`, `/var/run/ztun`,
        `%ProgramData%\\ztun`); cleared by a reboot where the OS allows."""

    # -- start-up ----------------------------------------------------------------------

    def probe(self, opts: RunOptions) -> Accelerations:
        """What this run may use. The default: the portable profile, the TUN read from
        the loop (a device without a descriptor is read by the thread anyway)."""
        return Accelerations(tun_reader="thread" if opts.tun_thread or opts.portable else "loop")

    def open_device(self, opts: RunOptions, accel: Accelerations) -> Device:
        """Open and configure `opts.device` (addresses, MTU, up); raises OSError
        (DeviceError) or ValueError saying what is wrong."""
        from ..tun import open_device

        return open_device(
            opts.device,
            mtu=opts.mtu,
            addresses=opts.addresses,
            offload=accel.vnet_hdr,
            multi_queue=accel.multi_queue,
        )

    def stop_on_signals(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
        """Call `stop` on the loop at SIGINT and SIGTERM (those the OS has); SIGHUP
        reloads the config instead (`ztun.instance`).

        Where the loop cannot watch signals (Windows' loops), the handler is a plain
        `signal.signal` one that hands `stop` to the loop thread-safely."""
        for name in ("SIGINT", "SIGTERM"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                loop.add_signal_handler(sig, stop)
            except NotImplementedError:
                signal.signal(sig, lambda _s, _f: loop.call_soon_threadsafe(stop))

    # -- routes and DNS ----------------------------------------------------------------

    def journal_path(self, device_name: str) -> Path:
        """The journal of `device_name`'s routes in `state_dir`."""
        return self.state_dir / f"{_SAFE_NAME.sub('_', device_name)}.journal"

    def journal_scope(self, path: Path) -> JournalScope:
        """Whose a journal in `state_dir` is; without network namespaces, always ours."""
        return JournalScope.HERE

    @abstractmethod
    def routes(self, journal: Journal) -> RouteApplier:
        """The auto-route applier of this OS, writing to `journal`."""

    def dns(self, journal: Journal) -> DnsApplier | None:
        """The resolver applier for `--dns`, or None where routes capture DNS already."""
        return None

    @abstractmethod
    def is_ztun(self, pid: int) -> bool:
        """Whether `pid` is a live ztun process (a journal's writer; a reused pid is not)."""

    def live_owner(self, journal: Journal) -> int | None:
        """The pid of a still-running ztun that wrote `journal` (None: none, or us)."""
        import os

        try:
            state = journal.read()
        except Exception:  # an unreadable journal is recover()'s to report
            return None
        pid = state.pid
        if not pid or pid == os.getpid():
            return None
        return pid if self.is_ztun(pid) else None

    # -- TCP redirect (`--redirect`) ----------------------------------------------------

    def install_redirect(self, device_name: str, port: int) -> None:
        """Send this host's TCP bound for the device to `port` on loopback."""
        raise UnsupportedPlatform(f"--redirect is not available on {self.name}")

    def remove_redirect(self, device_name: str) -> None:  # noqa: B027 - a no-op by default
        """Undo `install_redirect` (nothing if it was never installed)."""

    # -- the kernel NAT (`kernel_nat`) --------------------------------------------------

    def start_kernel_nat(self, device: Device) -> KernelNat:
        """Put the TCP hairpin rewrite into the kernel for `device` (`ztun.kernelnat`):
        maps, program, hook. Raises UnsupportedPlatform, or OSError saying what refused."""
        raise UnsupportedPlatform(f"the kernel NAT is not available on {self.name}")

    # -- ztun cleanup --------------------------------------------------------------------

    def cleanup_extras(self, say: Callable[[str], None]) -> int:
        """Remove what else a killed ztun (or demo, bench) leaves on this OS, saying what
        through `say`; the number of namespaces removed."""
        return 0
