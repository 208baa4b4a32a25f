"""``python -m harness cleanup``: remove what the harness left behind.

Leftovers come from runs killed with SIGKILL (or a machine that lost power mid-run):
namespaces named ``zt...`` in /run/netns, with whatever still runs inside them, and
veth ends that somehow reached the root namespace.  Runs that are still alive are left
alone unless ``--force`` (their owner records say so; see harness.hygiene).
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.hygiene import cleanup
from harness.topo import NAME_PREFIX

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["pcap"]:  # its own parser; imports scapy, so only when asked for
        from harness.pcap.cli import main as pcap_main

        return pcap_main(words[1:])
    if words[:1] == ["vm"]:  # VM guests; imports paramiko and friends only when asked for
        from harness.vmcli import main as vm_main

        return vm_main(words[1:])
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
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
    sub.add_parser("pcap", help="canonical pcap diff/render (python -m harness pcap -h)")
    sub.add_parser(
        "vm", help="VM guests: build/boot/accel/box/info/clean (python -m harness vm -h)"
    )
    args = parser.parse_args(argv)

    if not args.prefix.startswith(NAME_PREFIX):
        parser.error(f"--prefix must start with {NAME_PREFIX!r}: only our names are removed")
    if os.geteuid() != 0:
        print("cleanup needs root (namespaces are removed with CAP_SYS_ADMIN)", file=sys.stderr)
        return EXIT_USAGE
    report = cleanup(args.prefix, force=args.force, dry_run=args.dry_run)
    print(("[dry run] " if args.dry_run else "") + report.render())
    return EXIT_ERRORS if report.errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
