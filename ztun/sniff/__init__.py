"""Sniff a domain from the first bytes of a flow: TLS SNI, HTTP Host, QUIC Initial SNI.

Sans-IO and bounded.  The engine keeps the first bytes of a new TCP flow (or the first
datagrams of a UDP flow to port 443), calls the sniffer until it stops answering
``Verdict.NEED_MORE`` or a short deadline passes, then opens the outbound with the domain
if one was found.
"""

from ztun.sniff.http import sniff_http
from ztun.sniff.quic import QUIC_DECRYPT_AVAILABLE, QuicSniffer, client_initial_keys, sniff_quic
from ztun.sniff.result import (
    MAX_HTTP_BYTES,
    MAX_TLS_BYTES,
    Sniffed,
    SniffResult,
    Verdict,
    clean_hostname,
)
from ztun.sniff.tls import server_name_from_hello, sniff_tls

SNIFF_TIMEOUT = 0.3  # seconds a TCP flow waits for its first bytes before connecting blind


def sniff_stream(data: bytes | bytearray | memoryview) -> SniffResult:
    """TLS, then HTTP, on a TCP flow's first bytes: a domain, NEED_MORE, or a final no.

    NEED_MORE if either could still match; NOT_THIS_PROTOCOL only if both are ruled out.
    """
    verdicts = []
    for sniffer in (sniff_tls, sniff_http):
        result = sniffer(data)
        if isinstance(result, Sniffed):
            return result
        verdicts.append(result)
    if Verdict.NEED_MORE in verdicts:
        return Verdict.NEED_MORE
    if Verdict.UNKNOWN in verdicts:
        return Verdict.UNKNOWN
    return Verdict.NOT_THIS_PROTOCOL


__all__ = [
    "MAX_HTTP_BYTES",
    "MAX_TLS_BYTES",
    "QUIC_DECRYPT_AVAILABLE",
    "SNIFF_TIMEOUT",
    "QuicSniffer",
    "SniffResult",
    "Sniffed",
    "Verdict",
    "clean_hostname",
    "client_initial_keys",
    "server_name_from_hello",
    "sniff_http",
    "sniff_quic",
    "sniff_stream",
    "sniff_tls",
]
