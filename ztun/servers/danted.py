"""The danted.conf every danted the project starts runs with (`ztun demo`, `ztun bench`,
the harness's starters, the outbound tests): one writer, its differences as parameters.

Dante 1.4 (danted.conf(5)): `internal` is where it listens, `external` what it sends
from; `clientmethod`/`socksmethod` choose authentication before and inside SOCKS.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["danted_config"]


def danted_config(
    internal: Sequence[tuple[str, int]],
    external: Sequence[str],
    *,
    username_auth: bool = False,
    log: str = "error connect disconnect",
    rotation_by_route: bool = True,
) -> str:
    """A danted.conf that relays CONNECT, BIND and UDP ASSOCIATE for any client.

    `internal` lists (address, port) to listen on, `external` interface names or
    addresses. `external.rotation: route` (`rotation_by_route`) makes danted pick the
    source address the routing table would pick, so a dual-stack proxy reaches both
    IPv4 and IPv6 targets. `log` is what each rule logs (`error` alone keeps danted's
    per-connection cost out of a benchmark). `udpreply` must be allowed in a second
    rule: replies from targets are matched against it, not against `udpassociate`.
    With `username_auth` the RFC 1929 method is required (danted checks the system's
    password database, not its config).
    """
    lines = ["logoutput: stderr"]
    lines += [f"internal: {address} port = {port}" for address, port in internal]
    lines += [f"external: {e}" for e in external]
    if rotation_by_route:
        lines.append("external.rotation: route")
    lines += [
        "clientmethod: none",
        f"socksmethod: {'username' if username_auth else 'none'}",
        "user.privileged: root",
        "user.unprivileged: nobody",
    ]
    rules = [
        ("client", None),
        ("socks", "bind connect udpassociate"),
        ("socks", "bindreply udpreply"),
    ]
    for kind, commands in rules:
        lines += [f"{kind} pass {{", "  from: 0/0 to: 0/0"]
        if commands:
            lines.append(f"  command: {commands}")
        if log:
            lines.append(f"  log: {log}")
        lines.append("}")
    return "\n".join(lines) + "\n"
