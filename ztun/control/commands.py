"""`ztun status`, `ztun flows`, `ztun close`, `ztun reload`: the control socket's client.

An instance is found by `--device NAME`, by `--control PATH`, or as the only one running
in this network namespace; several running and none named lists them and exits 2, none
exits 1. Text output is plain: `--watch` redraws it in place with an ANSI clear, no
terminal library (rich or textual would add megabytes of modules to a runtime kept lean,
for a table; docs/control.md says more).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .client import ControlClient, ControlError, ControlUnreachable
from .paths import Instance, control_path, discover

CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen (ECMA-48 CUP + ED)


class NoInstance(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_control_parsers(sub: Any, add_logging: Callable[[argparse.ArgumentParser], None]) -> None:
    def target(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--device", metavar="NAME", help="the instance on this device (tun://NAME or NAME)"
        )
        p.add_argument("--control", metavar="PATH", help="the instance's control socket")
        add_logging(p)
        return p

    status = target(sub.add_parser("status", help="what a running ztun is doing"))
    status.add_argument("--json", action="store_true", help="the status reply as JSON")
    status.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    status.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="--watch period (default 1)"
    )
    status.add_argument(
        "--count", type=int, default=0, metavar="N", help="--watch: stop after N redraws"
    )
    flows = target(sub.add_parser("flows", help="one row per open flow"))
    flows.add_argument("--json", action="store_true", help="a JSON list of flow objects")
    flows.add_argument("--proto", choices=("tcp", "udp", "icmp"), help="only this protocol")
    flows.add_argument("--dst", type=_cidr_arg, metavar="CIDR", help="only flows to this network")
    flows.add_argument("--domain", metavar="D", help="only flows to D or its subdomains")
    close = target(sub.add_parser("close", help="end one flow (a TCP flow gets a reset)"))
    close.add_argument(
        "flow_id", type=_flow_id_arg, metavar="FLOW_ID", help="as `ztun flows` shows it"
    )
    target(sub.add_parser("reload", help="re-read the config file (as SIGHUP does)"))


def _cidr_arg(text: str) -> str:
    """--dst checked as the instance would check it, so a typo exits 2 before any call."""
    from ..flows import FlowFilter

    try:
        FlowFilter.from_request({"dst": text})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _flow_id_arg(text: str) -> int | str:
    """FLOW_ID checked as the instance would check it (exit 2, not the instance's 1)."""
    from .handler import CommandFailed, flow_id

    try:
        return flow_id(text)
    except CommandFailed as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def find_instance(
    device: str | None, control: str | None, instances: Sequence[Instance] | None = None
) -> str:
    """The control path to talk to; NoInstance (exit 1: none, 2: which one?) otherwise."""
    if control:
        return control
    if device:
        return control_path(device.removeprefix("tun://"))
    found = [i for i in (discover() if instances is None else instances) if _answers(i.path)]
    if not found:
        raise NoInstance(1, "no ztun is running in this network namespace")
    if len(found) > 1:
        names = "\n".join(f"  {i.device}  ({i.path})" for i in found)
        raise NoInstance(2, f"several ztun instances are running; name one with --device:\n{names}")
    return found[0].path


def _answers(path: str) -> bool:
    try:
        ControlClient(path, timeout=2.0).close()
    except ControlUnreachable:
        return False
    return True


def cmd_control(ns: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        path = find_instance(ns.device, ns.control)
        with ControlClient(path) as client:
            return _run(ns, client, out)
    except NoInstance as exc:
        print(f"ztun {ns.command}: {exc}", file=sys.stderr)
        return exc.code
    except ControlUnreachable as exc:
        print(f"ztun {ns.command}: no ztun answers at {exc.strerror}", file=sys.stderr)
        return 1
    except ControlError as exc:
        print(f"ztun {ns.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`ztun status --watch | head -1`): stop without a traceback,
        # and point stdout at /dev/null so the flush at exit does not fail once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(ns: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    if ns.command == "status":
        return _status(ns, client, out)
    if ns.command == "flows":
        args = {k: getattr(ns, k) for k in ("proto", "dst", "domain") if getattr(ns, k)}
        flows = client.call("flows", **args)
        out.write(json.dumps(flows, indent=1) + "\n" if ns.json else format_flows(flows))
        return 0
    if ns.command == "close":
        client.call("close", id=ns.flow_id)
        out.write(f"closed flow {ns.flow_id}\n")
        return 0
    result = client.call("reload")
    out.write(f"{result['message']}\n")
    return 0


def _status(ns: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    redraws = 0
    while True:
        status = client.call("status")
        if ns.json:
            out.write(json.dumps(status, indent=None if ns.watch else 1) + "\n")
        else:
            out.write((CLEAR if ns.watch else "") + format_status(status))
        out.flush()
        redraws += 1
        if not ns.watch or (ns.count and redraws >= ns.count):
            return 0
        time.sleep(max(0.1, ns.interval))  # noqa: sleep-ok - a refresh period, not a wait


# -- text ------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps mypy sure of a return


def human_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines) + "\n"


FLOW_COLUMNS = ("ID", "PROTO", "SRC", "DST", "DOMAIN", "OUTBOUND", "UP", "DOWN", "AGE", "STATE")


def format_flows(flows: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            str(f["id"]),
            f["proto"],
            f["src"],
            f["dst"],
            f["domain"] or "-",
            f["outbound"] or "-",
            human_bytes(f["bytes_up"]),
            human_bytes(f["bytes_down"]),
            human_age(f["age_s"]),
            f["state"],
        )
        for f in flows
    ]
    return table(FLOW_COLUMNS, rows) if rows else "no open flows\n"


def format_proxy(proxy: dict[str, Any]) -> str:
    """One proxy's health (docs/contracts.md section 2) on one line."""
    health = "up" if proxy["up"] else f"DOWN ({proxy.get('last_error') or 'no answer'})"
    rtt = f", rtt {proxy['rtt_ms']:.1f} ms" if proxy.get("rtt_ms") is not None else ""
    failures = proxy.get("failures", 0)
    failed = f", {failures} failure{'s' if failures != 1 else ''} in a row" if failures else ""
    return f"proxy {proxy['name']}: {health}{rtt}{failed}, {proxy.get('active', 0)} open"


def format_status(status: dict[str, Any]) -> str:
    from ..metrics import drop_reasons

    inst = status["instance"]
    lines = [
        f"ztun {inst['version']} on {inst['device']} (pid {inst['pid']}, {inst['platform']}, "
        f"{inst['workers']} worker{'s' if inst['workers'] != 1 else ''}), "
        f"up {human_age(inst['uptime_s'])}",
        f"control {inst.get('control', '-')}",
    ]
    accel = status.get("accelerations") or {}
    if accel:
        lines.append(
            "accelerations: " + " ".join(f"{k}={_on(v)}" for k, v in sorted(accel.items()))
        )
    lines += [format_proxy(proxy) for proxy in status.get("proxies") or ()]
    for name, group in sorted((status.get("groups") or {}).items()):
        now = group.get("active")
        lines.append(
            f"group {name}: {group['policy']} over {', '.join(group['members'])}; "
            + (f"new flows go to {now}" if now else "no member is up")
        )
    flows = status["flows"]
    active = ", ".join(f"{p} {n}" for p, n in flows["active"].items())
    lines.append(f"open flows: {active}")
    opened = ", ".join(f"{r['proto']} via {r['outbound']} {r['count']}" for r in flows["opened"])
    lines.append(f"opened: {opened or 'none yet'}")
    moved = ", ".join(
        f"{r['proto']} {r['direction']} {human_bytes(r['bytes'])}" for r in flows["bytes"]
    )
    lines.append(f"bytes: {moved or 'none yet'}")
    drops = drop_reasons(status["counters"])
    if drops:
        lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    top = status.get("top_flows") or []
    text = "\n".join(lines) + "\n"
    if top:
        text += "\nbusiest flows:\n" + format_flows(top)
    return text


def _on(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
