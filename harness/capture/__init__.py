"""Packet capture: the tcpdump wrapper (pcap normalising lives in harness.pcap)."""

from harness.capture.tcpdump import DEFAULT_SNAPLEN, Capture, CaptureError, capture, count_packets

__all__ = ["DEFAULT_SNAPLEN", "Capture", "CaptureError", "capture", "count_packets"]
