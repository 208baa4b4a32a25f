"""``capture(host, iface, bpf)``: a tcpdump that is really listening before the test goes on.

Why each tcpdump flag:

* ``-U`` -- write each packet as it arrives (packet-buffered), so a SIGINT never loses a
  buffer and a crashed test still leaves a readable file;
* ``--immediate-mode`` -- no kernel-side batching delay between arrival and write;
* ``-w FILE`` with the default format -- classic pcap (not pcapng), which every tool
  and the harness's normaliser read;
* ``-i IFACE`` -- one interface, never ``any`` (the ``any`` pseudo-device rewrites link
  headers to SLL and mixes directions);
* ``-nn`` -- no name or port lookups (no DNS traffic of our own, no delays);
* SIGUSR1 before SIGINT -- see :func:`_drain`;
* ``-Z root`` -- Debian's tcpdump drops to user ``tcpdump`` after opening the device,
  and that user may not write into the test's artifact folder.

The context manager returns only after tcpdump printed ``listening on`` (it does so after
the BPF filter is attached), and on exit sends SIGINT and waits for the ``N packets
captured`` statistics line, which tcpdump prints after the file is flushed and closed.
"""

from __future__ import annotations

import contextlib
import re
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import artifacts
from harness.hosts.base import DEFAULT_STOP_TIMEOUT, Host, LogLine, Process
from harness.proc import PROBE_INTERVAL_MAX, PROBE_INTERVAL_MIN, run_local
from harness.skips import require_tool
from ztun.proc import poll_until
from ztun.tools import tool

__all__ = [
    "DEFAULT_SNAPLEN",
    "Capture",
    "CaptureError",
    "capture",
    "count_packets",
]

DEFAULT_SNAPLEN = 262144
"""tcpdump's own default: whole packets, so checksums can be verified."""

LISTEN_TIMEOUT = 10.0
"""Seconds tcpdump gets to open the interface and attach the filter."""

SUMMARY_LINES = 10
"""Packets shown in a failure report's capture summary."""

DRAIN_ROUNDS = 100
"""Upper bound on SIGUSR1 statistics requests while draining."""

SETTLE_TIME = 0.25
"""Seconds of unchanged tcpdump counters after which a capture is taken as drained
(see :func:`_drain`); far above the 1 ms ring-block timeout of immediate mode."""

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond
    b"\xa1\xb2\x3c\x4d": ">",
}
_PCAP_GLOBAL_HEADER = 24
_PCAP_RECORD_HEADER = 16


class CaptureError(RuntimeError):
    """tcpdump failed, or did not flush its file when stopped."""


def count_packets(path: Path) -> int:
    """Records in a classic pcap file (a truncated last record is not counted)."""
    data = path.read_bytes()
    if len(data) < _PCAP_GLOBAL_HEADER:
        return 0
    endian = _PCAP_MAGICS.get(data[:4])
    if endian is None:
        raise CaptureError(f"{path} is not a classic pcap file (magic {data[:4].hex()})")
    record = struct.Struct(endian + "IIII")
    offset, count = _PCAP_GLOBAL_HEADER, 0
    while offset + _PCAP_RECORD_HEADER <= len(data):
        _, _, incl_len, _ = record.unpack_from(data, offset)
        offset += _PCAP_RECORD_HEADER + incl_len
        if offset > len(data):
            break
        count += 1
    return count


def _short_host(host: Host) -> str:
    return str(getattr(host, "label", None) or host.name)


def _free_path(folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    candidate = folder / f"{stem}.pcap"
    n = 1
    while candidate.exists():
        candidate = folder / f"{stem}-{n}.pcap"
        n += 1
    return candidate


@dataclass
class Capture:
    """A running or finished capture; ``path`` is the pcap file."""

    path: Path
    host: str
    iface: str
    bpf: str
    process: Process | None = field(default=None, repr=False)
    captured: int | None = None
    """tcpdump's own "packets captured" count, once stopped."""
    dropped: int | None = None
    """tcpdump's "packets dropped by kernel" (non-zero means the pcap is incomplete)."""

    def packet_count(self) -> int:
        return count_packets(self.path)

    def text(self, limit: int | None = None, *, extra: tuple[str, ...] = ()) -> str:
        """``tcpdump -nn -r`` of the file (first ``limit`` packets), e.g. ``extra=("-v",)``."""
        argv = [tool("tcpdump"), "-nn", "-r", str(self.path), *extra]
        if limit is not None:
            argv += ["-c", str(limit)]
        result = run_local(argv)
        return result.stdout if result.ok else f"(tcpdump -r failed: {result.stderr.strip()})"

    def summary(self) -> str:
        """Path, packet count and the first packets: what a failure report shows."""
        try:
            count = str(self.packet_count())
            first = self.text(SUMMARY_LINES).rstrip()
        except (OSError, CaptureError) as exc:
            count, first = "?", f"(unreadable: {exc})"
        stats = ""
        if self.captured is not None:
            stats = f"; tcpdump: {self.captured} captured, {self.dropped or 0} dropped by kernel"
        filt = f" filter {self.bpf!r}" if self.bpf else ""
        head = f"{self.path}\n  {count} packets on {self.host}:{self.iface}{filt}{stats}"
        indented = "\n".join(f"    {line}" for line in first.splitlines())
        return f"{head}\n{indented}" if indented else head


_FINAL_STATS = re.compile(r"^(\d+) packets? (captured|dropped by kernel)$", re.MULTILINE)
_INFO_STATS = re.compile(
    r"(\d+) packets? captured, (\d+) packets? received by filter, (\d+) packets? dropped"
)


def _parse_stats(log: str, capture: Capture) -> bool:
    """Read tcpdump's exit statistics (printed once the file is closed)."""
    found = False
    for match in _FINAL_STATS.finditer(log):
        if match.group(2) == "captured":
            capture.captured = int(match.group(1))
            found = True
        else:
            capture.dropped = int(match.group(1))
    return found


def _await_output(proc: Process, predicate: Callable[[str], bool], timeout: float) -> bool:
    """Event-driven with LocalProcess.wait_output; a bounded poll for other backends."""
    waiter = getattr(proc, "wait_output", None)
    if waiter is not None:
        return bool(waiter(predicate, timeout))
    return poll_until(lambda: predicate(proc.log_text()), timeout, stop=lambda: not proc.alive())


def _more_reports_than(seen: int) -> Callable[[str], bool]:
    return lambda text: len(_INFO_STATS.findall(text)) > seen


def _drain(proc: Process, timeout: float) -> None:
    """Let tcpdump write every packet the kernel already queued for it.

    SIGINT makes tcpdump leave its loop at once, dropping what sits unread in its ring
    -- e.g. the echo reply that arrived while the test was already stopping (with
    TPACKET_V3 a packet waits in the current ring block until the block is retired,
    1 ms in immediate mode).  SIGUSR1 makes tcpdump print "N captured, M received by
    filter, D dropped"; every queued packet is in the file once N + D >= M.  On ``lo``
    libpcap discards the outgoing copy of each packet after counting it, so N + D stays
    below M: there, and as a bound everywhere, counts unchanged for SETTLE_TIME also end
    the wait.  Reports are requested with a bounded back-off (the kernel has no event for
    "ring drained").
    """
    deadline = time.monotonic() + timeout
    last: tuple[int, int, int] | None = None
    changed_at = time.monotonic()
    interval = PROBE_INTERVAL_MIN
    for _ in range(DRAIN_ROUNDS):
        seen = len(_INFO_STATS.findall(proc.log_text()))
        proc.send_signal(signal.SIGUSR1)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _await_output(proc, _more_reports_than(seen), remaining):
            return
        captured, received, dropped = (int(n) for n in _INFO_STATS.findall(proc.log_text())[-1])
        counts = (captured, received, dropped)
        if captured + dropped >= received:
            return
        now = time.monotonic()
        if counts != last:
            last, changed_at = counts, now
        elif now - changed_at >= SETTLE_TIME:
            return
        threading.Event().wait(min(interval, max(0.0, deadline - now)))
        interval = min(interval * 2, PROBE_INTERVAL_MAX)


@contextlib.contextmanager
def capture(
    host: Host,
    iface: str,
    bpf: str = "",
    *,
    snaplen: int = DEFAULT_SNAPLEN,
    name: str | None = None,
    directory: Path | None = None,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> Iterator[Capture]:
    """Capture ``iface`` of ``host`` (BPF filter ``bpf``) for the duration of the block.

    The pcap goes to the running test's artifacts (``pcaps/<host>-<iface>.pcap``), or to
    ``directory`` (default: a temporary folder) outside a test.  The capture is
    registered with the test at once, so a test that fails inside the block still gets
    its pcap attached.
    """
    require_tool("tcpdump")
    current = artifacts.current()
    if directory is None:
        directory = current.dir / "pcaps" if current else Path(tempfile.mkdtemp(prefix="ztcap-"))
    stem = name or f"{_short_host(host)}-{iface}"
    path = _free_path(directory, stem)
    cap = Capture(path=path, host=_short_host(host), iface=iface, bpf=bpf)
    argv = [tool("tcpdump"), "-U", "--immediate-mode", "-nn", "-Z", "root", "-i", iface]
    argv += ["-s", str(snaplen), "-w", str(path)]
    if bpf:
        argv.append(bpf)
    if current is not None:
        current.add_capture(cap)
    proc = host.spawn(
        argv, name=f"tcpdump-{stem}", ready=LogLine("listening on"), timeout=LISTEN_TIMEOUT
    )
    cap.process = proc
    body_failed = False
    try:
        yield cap
    except BaseException:
        body_failed = True
        raise
    finally:
        error = _stop(proc, cap, stop_timeout)
        # Never mask the test's own exception with a capture complaint.
        if error is not None and not body_failed:
            raise error


def _stop(proc: Process, cap: Capture, timeout: float) -> CaptureError | None:
    """Drain, SIGINT tcpdump and await its statistics (printed after the file is closed)."""
    if proc.alive():
        _drain(proc, timeout)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except TimeoutError:
        proc.stop()
        return CaptureError(
            f"tcpdump on {cap.host}:{cap.iface} ignored SIGINT for {timeout:g}s; "
            f"{cap.path} may be incomplete"
        )
    if not _parse_stats(proc.log_text(), cap):
        return CaptureError(
            f"tcpdump on {cap.host}:{cap.iface} exited {proc.returncode} without its "
            f"statistics; {cap.path} may be incomplete\n{proc.log_text()[-2000:]}"
        )
    return None
