"""``ztun-harness`` (also ``python -m harness``): the harness's command line.

* ``certify``  run the shipped conformance suite against one implementation
               (:mod:`harness.certify`);
* ``report``   show a report, or put several side by side (``--merge DIR...``);
* ``cleanup``  remove what runs killed with SIGKILL left behind (namespaces named
               ``zt...`` with whatever still runs inside, stray veth ends);
* ``example``  list the shipped examples (``harness/examples``: config templates) or
               print one, to copy and edit;
* ``pcap``, ``vm``  canonical pcap diffs; VM guests (their own ``-h``).

Heavy modules (pytest, scapy, paramiko) are imported by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
PROG = "ztun-harness"


def _cleanup(args: argparse.Namespace) -> int:
    from harness.hygiene import cleanup
    from harness.topo import NAME_PREFIX

    if not args.prefix.startswith(NAME_PREFIX):
        print(
            f"{PROG} cleanup: error: --prefix must start with {NAME_PREFIX!r}: only our "
            "names are removed",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("cleanup needs root (namespaces are removed with CAP_SYS_ADMIN)", file=sys.stderr)
        return EXIT_USAGE
    report = cleanup(args.prefix, force=args.force, dry_run=args.dry_run)
    print(("[dry run] " if args.dry_run else "") + report.render())
    return EXIT_ERRORS if report.errors else EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from harness import report

    try:
        documents = [report.load(location)[0] for location in args.reports]
        merged = report.merge(documents)
    except report.ReportError as exc:
        print(f"{PROG} report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(report.render_text(merged)))
    if args.output is not None:
        for path in report.write(merged, Path(args.output)):
            print(f"written: {path}")
    return EXIT_OK


EXAMPLES = Path(__file__).with_name("examples")
"""Examples shipped as package data: config templates written as a user would."""


def _example(args: argparse.Namespace) -> int:
    shipped = sorted(p.name for p in EXAMPLES.iterdir() if p.is_file())
    if args.name is None:
        print("\n".join(shipped))
        return EXIT_OK
    if args.name not in shipped:
        print(
            f"{PROG} example: error: no example {args.name!r} (shipped: {', '.join(shipped)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    sys.stdout.write((EXAMPLES / args.name).read_text())
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    from harness.certify import add_arguments
    from harness.topo import NAME_PREFIX

    parser = argparse.ArgumentParser(
        prog=PROG, description="The ztun harness: certify a tun2socks, read its reports."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    certify = sub.add_parser(
        "certify",
        help="run the conformance suite against one implementation",
        description="Run the shipped conformance suite against one tun2socks "
        "(exit 0: conforms, 1: a required behaviour failed, 2: usage error or nothing ran).",
    )
    add_arguments(certify)
    shown = sub.add_parser(
        "report",
        help="show reports, side by side",
        description="Print the table of one or more reports (folders holding report.json, "
        "or the files) side by side; with -o also write report.json/.md/.html there.",
    )
    shown.add_argument("--merge", dest="reports", nargs="+", metavar="DIR", required=True)
    shown.add_argument("-o", "--output", metavar="DIR", help="write the merged report here")
    clean = sub.add_parser("cleanup", help="remove leftover namespaces/links and their processes")
    clean.add_argument(
        "--prefix",
        default=NAME_PREFIX,
        help=f"only names starting with this (default {NAME_PREFIX!r}; must start with it)",
    )
    clean.add_argument(
        "--force", action="store_true", help="also remove what belongs to runs still alive"
    )
    clean.add_argument("--dry-run", action="store_true", help="only print what would go")
    example = sub.add_parser(
        "example",
        help="list the shipped examples or print one (config templates)",
        description="Without NAME list the examples shipped with the harness; with NAME "
        "print it (e.g. 'example sing-box.json > sing-box.json', a --tun2socks-config-template).",
    )
    example.add_argument("name", nargs="?", metavar="NAME")
    sub.add_parser("pcap", help=f"canonical pcap diff/render ({PROG} pcap -h)")
    sub.add_parser("vm", help=f"VM guests: build/boot/accel/box/info/clean ({PROG} vm -h)")
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["pcap"]:  # its own parser; imports scapy, so only when asked for
        from harness.pcap.cli import main as pcap_main

        return pcap_main(words[1:])
    if words[:1] == ["vm"]:  # VM guests; imports paramiko and friends only when asked for
        from harness.vmcli import main as vm_main

        return vm_main(words[1:])
    parser = _parser()
    args = parser.parse_args(words)
    if args.command == "certify":
        from harness.certify import run

        return run(args)
    if args.command == "report":
        return _report(args)
    if args.command == "example":
        return _example(args)
    return _cleanup(args)


if __name__ == "__main__":
    sys.exit(main())
