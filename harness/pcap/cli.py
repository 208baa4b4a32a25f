"""``python -m harness pcap ...``: canonical pcap comparison for humans.

    python -m harness pcap diff A.pcap B.pcap [--profile P] [--tier strict|semantic]
    python -m harness pcap render A.pcap [--profile P] [--write]

Without ``--profile`` the TOML beside ``A.pcap`` is used if there is one (a golden's
own profile), else the strict default. Exit status: 0 same, 1 different, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from harness.pcap.diff import compare, document
from harness.pcap.golden import Golden
from harness.pcap.normalise import canonicalise
from harness.pcap.profile import Profile, ProfileError, Tier, load_profile

EXIT_SAME, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2


def _profile(explicit: str | None, beside: Path, tier: str | None) -> Profile:
    if explicit is not None:
        profile = load_profile(explicit)
    elif beside.with_suffix(".toml").exists():
        profile = load_profile(beside.with_suffix(".toml"))
    else:
        profile = Profile()
    if tier in ("strict", "semantic") and tier != profile.tier:
        chosen: Tier = "strict" if tier == "strict" else "semantic"
        why = f"{profile.why} (tier {tier} from the command line)"
        profile = dataclasses.replace(profile, tier=chosen, why=why)
    return profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ztun-harness pcap",  # also python -m harness pcap: both run harness.cli
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    diff = sub.add_parser("diff", help="compare two captures canonically (exit 1 if they differ)")
    diff.add_argument("a", type=Path, help="expected capture (e.g. pcaps/NAME.pcap)")
    diff.add_argument("b", type=Path, help="actual capture")
    render = sub.add_parser("render", help="print a capture's canonical text")
    render.add_argument("a", type=Path, help="capture")
    render.add_argument(
        "--write",
        action="store_true",
        help="write the golden NAME.txt beside the pcap instead of printing",
    )
    for p in (diff, render):
        p.add_argument("--profile", help="profile TOML (default: the one beside the first pcap)")
        p.add_argument("--tier", choices=("strict", "semantic"), help="override the tier")
    args = parser.parse_args(argv)

    for path in (args.a, getattr(args, "b", None)):
        if path is not None and not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return EXIT_USAGE
    try:
        profile = _profile(args.profile, args.a, args.tier)
        print(profile.describe(), file=sys.stderr)
        if args.command == "render":
            if args.write:
                Golden(args.a.parent, args.a.stem).write_text()
                print(f"wrote {args.a.with_suffix('.txt')}", file=sys.stderr)
            else:
                sys.stdout.write(document(canonicalise(args.a, profile), args.a.stem))
            return EXIT_SAME
        result = compare(args.a, args.b, profile)
    except (ProfileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if result.equal:
        print(f"same ({profile.tier} tier): {args.a} == {args.b}")
        return EXIT_SAME
    sys.stdout.write(result.report())
    return EXIT_DIFFERENT


if __name__ == "__main__":
    sys.exit(main())
