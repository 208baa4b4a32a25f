"""What a sniffer says about the first bytes of a flow."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

# Bounds on how much of a flow a sniffer looks at: a ClientHello with post-quantum key
# shares is ~1.8 KB, with ECH and padding rarely over 4 KB; request headers that do not
# name the host in 8 KB never will.
MAX_TLS_BYTES = 16 * 1024
MAX_HTTP_BYTES = 8 * 1024
MAX_DOMAIN_LENGTH = 253

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*$"
)


class Verdict(Enum):
    """A sniffer's answer when it has no domain to give."""

    NEED_MORE = "need_more"  # could still be this protocol: call again with more bytes
    NOT_THIS_PROTOCOL = "not_this_protocol"  # definitely not it: try another, or give up
    UNKNOWN = "unknown"  # it is this protocol, but no usable name (none sent, unreadable,
    # past the size bound, or -- QUIC -- no decryption support installed)


@dataclass(frozen=True, slots=True)
class Sniffed:
    """A domain read from the flow, and which protocol named it (``tls``/``http``/``quic``)."""

    domain: str
    protocol: str


SniffResult = Sniffed | Verdict


def clean_hostname(raw: bytes | str) -> str | None:
    """A lower-case DNS name without the trailing dot, or None (IP literals included:
    a sniffed address adds nothing to the destination address we already have)."""
    try:
        name = raw.decode("ascii") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None
    name = name.strip().rstrip(".").lower()
    if not _HOSTNAME.match(name):
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return None
