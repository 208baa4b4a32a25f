"""DNS for the TUN: fake-IP pool, hijack/remote resolution through the proxy, TTL cache.

Everything here is sans-IO (bytes and ``now`` in, bytes out) except :mod:`ztun.dns.state`,
which persists the pool atomically.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real names for type checkers; at run time __getattr__ loads them
    from ztun.dns.cache import DnsCache, cache_key
    from ztun.dns.fakeip import DEFAULT_V4_RANGE, DEFAULT_V6_RANGE, FakeIpPool, normalize_domain
    from ztun.dns.framing import TcpDnsDeframer, frame
    from ztun.dns.handler import Answer, DnsHandler, Drop, Forward, fit_udp, reverse_pointer_address
    from ztun.dns.mode import DEFAULT_FAKE_TTL, UPSTREAM_TIMEOUT, DnsMode
    from ztun.dns.state import SAVE_INTERVAL, load_pool, save_pool, write_atomic

# Loaded on first use: the codec (dnslib) costs memory a ztun without DNS modes never needs.
_WHERE = {
    "DEFAULT_FAKE_TTL": "ztun.dns.mode",
    "DEFAULT_V4_RANGE": "ztun.dns.fakeip",
    "DEFAULT_V6_RANGE": "ztun.dns.fakeip",
    "SAVE_INTERVAL": "ztun.dns.state",
    "UPSTREAM_TIMEOUT": "ztun.dns.mode",
    "Answer": "ztun.dns.handler",
    "DnsCache": "ztun.dns.cache",
    "DnsHandler": "ztun.dns.handler",
    "DnsMode": "ztun.dns.mode",
    "Drop": "ztun.dns.handler",
    "FakeIpPool": "ztun.dns.fakeip",
    "Forward": "ztun.dns.handler",
    "TcpDnsDeframer": "ztun.dns.framing",
    "cache_key": "ztun.dns.cache",
    "fit_udp": "ztun.dns.handler",
    "frame": "ztun.dns.framing",
    "load_pool": "ztun.dns.state",
    "normalize_domain": "ztun.dns.fakeip",
    "reverse_pointer_address": "ztun.dns.handler",
    "save_pool": "ztun.dns.state",
    "write_atomic": "ztun.dns.state",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ztun.dns' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
