"""A tiny authoritative DNS responder for `ztun demo` where dnsmasq is not installed.

`python -m ztun.servers.dns --listen 10.0.0.2:53 --answer name=10.0.0.2`
"""

from __future__ import annotations

import argparse
import socket

from dnslib import QTYPE, RR, A, DNSRecord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--answer", action="append", default=[], metavar="NAME=IPV4")
    ns = parser.parse_args()
    host, _, port = ns.listen.rpartition(":")
    answers = dict(a.split("=", 1) for a in ns.answer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    print(f"listening on {host}:{port}", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = DNSRecord.parse(data)
        except Exception:  # garbage from the network: answer nothing
            continue
        reply = query.reply()
        name = str(query.q.qname).rstrip(".")
        if query.q.qtype == QTYPE.A and name in answers:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(answers[name]), ttl=60))
        sock.sendto(reply.pack(), peer)


if __name__ == "__main__":
    main()
