"""The DNS modes and timing constants, apart from the codec so config parsing stays light.

(Importing dnslib costs a few MiB of resident memory; a ztun that does not touch DNS
should not pay it.)
"""

from __future__ import annotations

from enum import StrEnum

# Fake answers live 1 s: long enough for the connect that follows the lookup, short
# enough that after ztun stops (and its addresses mean nothing) clients re-resolve
# almost at once.  Re-queries are answered locally from the same stable mapping, so the
# short TTL costs a sub-millisecond local round trip, not an upstream query.
DEFAULT_FAKE_TTL = 1
UPSTREAM_TIMEOUT = 5.0  # seconds before a forwarded query is answered SERVFAIL


class DnsMode(StrEnum):
    """How DNS on the TUN is handled (``off``: plain UDP, relayed like any other)."""

    OFF = "off"
    HIJACK = "hijack"
    FAKE_IP = "fake-ip"
    REMOTE = "remote"
