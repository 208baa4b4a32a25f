"""Golden pcaps: canonical traces that are stable from run to run, and diffs a human reads.

* :func:`canonicalise` (normalise.py): pcap -> :class:`Trace` (ports, ISNs, timestamps,
  IP ids, MACs mapped by first appearance; checksums verified then left out; payloads by
  length + hash, SOCKS5/DNS decoded; per-flow grouping);
* :class:`Profile` (profile.py): the TOML beside each golden -- tier, masks, each with why;
* the tiers: strict (:meth:`Trace.text`) and semantic (:func:`semantic_text`);
* :func:`compare` / :class:`Comparison` / :func:`assertrepr_compare` (diff.py);
* :class:`Golden` (golden.py): ``pcaps/<name>.pcap/.toml/.txt``, record and compare;
* ``python -m harness pcap diff A.pcap B.pcap [--profile P]`` (cli.py).

Imports scapy (dissection): keep it out of the plugin's start-up path.
"""

from harness.pcap.diff import (
    CanonicalText,
    Comparison,
    assertrepr_compare,
    compare,
    document,
    tier_text,
    unified_diff,
)
from harness.pcap.golden import Golden, GoldenError, relative_timestamps
from harness.pcap.normalise import CanonPacket, Flow, Trace, canonicalise
from harness.pcap.profile import MASKABLE, Mask, Predicate, Profile, ProfileError, load_profile
from harness.pcap.semantic import expectation_failures, parse_match, semantic_text

__all__ = [
    "MASKABLE",
    "CanonPacket",
    "CanonicalText",
    "Comparison",
    "Flow",
    "Golden",
    "GoldenError",
    "Mask",
    "Predicate",
    "Profile",
    "ProfileError",
    "Trace",
    "assertrepr_compare",
    "canonicalise",
    "compare",
    "document",
    "expectation_failures",
    "load_profile",
    "parse_match",
    "relative_timestamps",
    "semantic_text",
    "tier_text",
    "unified_diff",
]
