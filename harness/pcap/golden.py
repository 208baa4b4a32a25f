"""Golden traces on disk: ``<dir>/<name>.pcap`` + ``.toml`` (profile) + ``.txt`` (rendering).

The ``.pcap`` is what was captured (so Wireshark and the checksum verifier see the real
bytes), with record timestamps made relative to the first packet: the date of a
recording is noise in a review, inter-packet timing is not. The ``.toml`` is written by
a human (it must say why it relaxes anything); recording never overwrites it. The
``.txt`` is always generated from the ``.pcap``, so a reviewer reads the golden in a diff.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.pcap.diff import Comparison, compare, document
from harness.pcap.normalise import canonicalise
from harness.pcap.profile import Profile, ProfileError, load_profile
from harness.pcap.semantic import expectation_failures

__all__ = ["Golden", "GoldenError", "relative_timestamps"]

PCAP_HEADER, PCAP_RECORD = 24, 16
_CLASSIC_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}


class GoldenError(RuntimeError):
    """A golden that cannot be used or written (missing profile, unmet expectations)."""


def relative_timestamps(data: bytes) -> bytes:
    """A classic pcap with each record's time made relative to the first record's.

    Anything else (pcapng) is returned unchanged: the normaliser drops times anyway.
    """
    magic = _CLASSIC_MAGICS.get(data[:4])
    if magic is None or len(data) < PCAP_HEADER:
        return data
    endian, per_second = magic
    record = struct.Struct(endian + "IIII")
    out = bytearray(data)
    offset, first = PCAP_HEADER, None
    while offset + PCAP_RECORD <= len(out):
        sec, frac, incl, orig = record.unpack_from(out, offset)
        stamp = sec * per_second + frac
        first = stamp if first is None else first
        sec, frac = divmod(max(stamp - first, 0), per_second)
        record.pack_into(out, offset, sec, frac, incl, orig)
        offset += PCAP_RECORD + incl
    return bytes(out)


@dataclass(frozen=True)
class Golden:
    directory: Path
    name: str

    @property
    def pcap(self) -> Path:
        return self.directory / f"{self.name}.pcap"

    @property
    def profile_path(self) -> Path:
        return self.directory / f"{self.name}.toml"

    @property
    def text_path(self) -> Path:
        return self.directory / f"{self.name}.txt"

    def profile(self) -> Profile:
        if not self.profile_path.exists():
            raise GoldenError(
                f"{self.profile_path} is missing: every golden needs a profile that says its "
                f"tier and why (see harness/pcap/profile.py for the format)"
            )
        try:
            return load_profile(self.profile_path)
        except ProfileError as exc:
            raise GoldenError(str(exc)) from None

    def exists(self) -> bool:
        return self.pcap.exists()

    def render(self) -> str:
        """The ``.txt`` the golden pcap should have beside it."""
        return document(canonicalise(self.pcap, self.profile()), self.name)

    def stale_text(self) -> bool:
        """The committed ``.txt`` is not the rendering of the committed ``.pcap``."""
        return not self.text_path.exists() or self.text_path.read_text() != self.render()

    def compare(self, actual: Path) -> Comparison:
        if not self.exists():
            raise GoldenError(
                f"no golden {self.pcap}: record it with pytest --update-golden and commit "
                f"{self.name}.pcap/.txt (and write {self.name}.toml)"
            )
        return compare(
            self.pcap,
            actual,
            self.profile(),
            expected_label=f"golden {self.name}",
            actual_label=f"actual {self.name}",
        )

    def record(self, actual: Path) -> None:
        """Make ``actual`` the golden (pcap + txt). Refuses a capture that violates the
        profile's expectations: a golden must not cement a bug."""
        profile = self.profile()
        failures = expectation_failures(canonicalise(actual, profile))
        if failures:
            raise GoldenError(f"not recording {self.name}: " + "; ".join(failures))
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.pcap.with_suffix(".pcap.tmp")
        tmp.write_bytes(relative_timestamps(actual.read_bytes()))
        shutil.move(tmp, self.pcap)
        self.text_path.write_text(self.render())

    def write_text(self) -> None:
        """Re-render the ``.txt`` from the committed pcap (after a normaliser change)."""
        self.text_path.write_text(self.render())
