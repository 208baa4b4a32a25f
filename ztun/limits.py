"""How many descriptors ztun may hold, and how many UDP flows that allows.

Every flow holds descriptors: a TCP relay two (the app's accepted socket and the
outbound one), a UDP flow through SOCKS5 two (the UDP ASSOCIATE's TCP control
connection and its UDP socket), a direct one one. The soft RLIMIT_NOFILE most shells and
systemd give a service is 1024 (macOS: 256), which a burst of new UDP flows exhausts in
a few hundred flows -- and then EMFILE refuses TCP accepts too. So `ztun run` raises its
soft limit to the hard one at start (as any process may), and when no
`max_udp_sessions` is set, bounds UDP flows to a share of the limit (the least recently
used closes when one more opens), leaving the rest for TCP and ztun's own sockets.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE (handles are limited per process by memory)
    resource = None  # type: ignore[assignment]

log = logging.getLogger("ztun")

#: Listeners, the control and metrics sockets, the TUN, log files, splice pipes, DNS.
RESERVED_DESCRIPTORS = 64
DESCRIPTORS_PER_UDP_FLOW = 2  # through SOCKS5: the TCP control connection + the UDP socket
#: UDP flows get half of what is left; TCP relays (2 each) and the rest the other half.
UDP_SHARE = 2
MIN_UDP_FLOWS = 16
#: Tried in turn when the hard limit is unlimited (macOS: RLIM_INFINITY, which
#: setrlimit refuses for RLIMIT_NOFILE above kern.maxfilesperproc; Linux: fs.nr_open).
FALLBACK_LIMITS = (1 << 20, 1 << 16, 10240)


def open_files_limit() -> int | None:
    """The soft RLIMIT_NOFILE now (None: the OS has none, or it is unlimited)."""
    if resource is None:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows (logged); the soft
    limit in force after (None: no limit applies)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft == hard:
        return open_files_limit()
    wanted = (hard,) if hard != resource.RLIM_INFINITY else FALLBACK_LIMITS
    for limit in wanted:
        if limit <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        except (ValueError, OSError):
            continue
        log.info("open files limit raised from %d to %d (the hard limit is %s)",
                 soft, limit, "unlimited" if hard == resource.RLIM_INFINITY else hard)  # fmt: skip
        return limit
    log.warning(
        "open files limit stays at %d: the hard limit (%s) could not be applied", soft, hard
    )
    return soft


def udp_flow_limit(open_files: int | None) -> int:
    """The default `max_udp_sessions` for a descriptor limit (0: no limit applies)."""
    if open_files is None:
        return 0
    budget = (open_files - RESERVED_DESCRIPTORS) // (UDP_SHARE * DESCRIPTORS_PER_UDP_FLOW)
    return max(MIN_UDP_FLOWS, budget)
