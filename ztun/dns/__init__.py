"""DNS for the TUN: fake-IP pool, hijack/remote resolution through the proxy, TTL cache.

Everything here is sans-IO (bytes and ``now`` in, bytes out) except :mod:`ztun.dns.state`,
which persists the pool atomically.
"""

from ztun.dns.cache import DnsCache, cache_key
from ztun.dns.fakeip import (
    DEFAULT_V4_RANGE,
    DEFAULT_V6_RANGE,
    FakeIpPool,
    normalize_domain,
)
from ztun.dns.framing import TcpDnsDeframer, frame
from ztun.dns.handler import (
    DEFAULT_FAKE_TTL,
    UPSTREAM_TIMEOUT,
    Answer,
    DnsHandler,
    DnsMode,
    Drop,
    Forward,
    fit_udp,
    reverse_pointer_address,
)
from ztun.dns.state import SAVE_INTERVAL, load_pool, save_pool, write_atomic

__all__ = [
    "DEFAULT_FAKE_TTL",
    "DEFAULT_V4_RANGE",
    "DEFAULT_V6_RANGE",
    "SAVE_INTERVAL",
    "UPSTREAM_TIMEOUT",
    "Answer",
    "DnsCache",
    "DnsHandler",
    "DnsMode",
    "Drop",
    "FakeIpPool",
    "Forward",
    "TcpDnsDeframer",
    "cache_key",
    "fit_udp",
    "frame",
    "load_pool",
    "normalize_domain",
    "reverse_pointer_address",
    "save_pool",
    "write_atomic",
]
