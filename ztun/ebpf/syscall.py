"""bpf(2) through ctypes: load a program, run it on a packet, and keep maps.

Only the commands ztun uses, each with the part of `union bpf_attr` it reads
(include/uapi/linux/bpf.h; the kernel zero-extends a shorter attr, so each struct
stops at the last field ztun sets). Errors are `BpfError` (an OSError with the
verifier's log when the kernel rejected a program).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BPF_ANY",
    "BPF_MAP_TYPE_HASH",
    "BPF_NOEXIST",
    "BPF_PROG_TYPE_SCHED_CLS",
    "BPF_PROG_TYPE_SOCKET_FILTER",
    "BpfError",
    "TestRun",
    "load_program",
    "map_create",
    "map_delete",
    "map_lookup",
    "map_lookup_and_delete",
    "map_update",
    "map_update_batch",
    "test_run",
]

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21  # hash maps: Linux 5.14
BPF_MAP_UPDATE_BATCH = 26  # Linux 5.6
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_MAP_TYPE_HASH = 1
BPF_ANY, BPF_NOEXIST = 0, 1  # BPF_MAP_UPDATE_ELEM flags
BPF_OBJ_NAME_LEN = 16
LOG_SIZE = 1 << 20
INSN_SIZE = 8
ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6, ETH_P_802_EX1 = 0x0800, 0x86DD, 0x88B5
IP4_MIN_HEADER, IP6_HEADER = 20, 40
LICENSE = b"GPL\0"  # the helpers ztun calls (csum, redirect) are GPL-only


class BpfError(OSError):
    """A bpf(2) command failed; `log` holds the verifier's log when the kernel rejected
    a program."""

    def __init__(self, errno_: int, message: str, log: str = "") -> None:
        super().__init__(errno_, message)
        self.log = log


class _ProgLoadAttr(ctypes.Structure):
    """The anonymous struct of BPF_PROG_LOAD (up to prog_name)."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),  # __aligned_u64 pointer to struct bpf_insn[]
        ("license", ctypes.c_uint64),  # pointer to a NUL-terminated string
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class _TestRunAttr(ctypes.Structure):
    """The `test` struct of BPF_PROG_TEST_RUN (up to flags)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),  # out: the program's return value
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),  # in: room at data_out; out: bytes written
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),  # NULL: the packet after the run is not wanted
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
    ]


class _MapCreateAttr(ctypes.Structure):
    """The anonymous struct of BPF_MAP_CREATE (up to map_name)."""

    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class _MapBatchAttr(ctypes.Structure):
    """The `batch` struct of BPF_MAP_*_BATCH."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),  # key_size * count bytes, back to back
        ("values", ctypes.c_uint64),  # value_size * count bytes
        ("count", ctypes.c_uint32),  # in: elements given; out: elements done
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _MapElemAttr(ctypes.Structure):
    """The anonymous struct of BPF_MAP_*_ELEM."""

    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),  # `key` is an __aligned_u64
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # a union with next_key
        ("flags", ctypes.c_uint64),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, opened on first use: Windows has no ``CDLL(None)``, and the pure
    parts of the modules above (reference functions, the assembler) load there too."""
    return ctypes.CDLL(None, use_errno=True)


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """The raw system call: its result, or -errno."""
    machine = platform.machine()
    if machine not in _SYS_BPF:
        raise BpfError(errno.ENOSYS, f"bpf(2): syscall number for {machine} unknown")
    ret: int = _libc().syscall(
        ctypes.c_long(_SYS_BPF[machine]),
        ctypes.c_long(cmd),
        ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_long(ctypes.sizeof(attr)),
    )
    if ret < 0:
        return -ctypes.get_errno()
    return ret


def _address(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def _permission_hint(err: int) -> str:
    return " (needs root or CAP_BPF + CAP_NET_ADMIN)" if err == errno.EPERM else ""


def load_program(prog_type: int, insns: bytes, name: bytes) -> int:
    """Load a program; return its fd (close-on-exec, the kernel's default for bpf fds).
    A rejection is retried with a verifier log, raised in BpfError."""
    if not insns or len(insns) % INSN_SIZE:
        raise ValueError(f"program: a positive multiple of {INSN_SIZE} bytes expected")
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(LICENSE, len(LICENSE))
    attr = _ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(insns) // INSN_SIZE,
        insns=_address(code),
        license=_address(license_),
        prog_name=name[: BPF_OBJ_NAME_LEN - 1],
    )
    fd = bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:
        return fd
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = 1, LOG_SIZE, _address(log)
    fd = bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:  # accepted the second time: keep it rather than fail
        return fd
    text = log.value.decode(errors="replace")
    tail = text.strip().splitlines()[-3:]
    raise BpfError(
        -fd,
        f"BPF_PROG_LOAD: {os.strerror(-fd)}{_permission_hint(-fd)}; verifier: {' | '.join(tail)}",
        text,
    )


@dataclass(frozen=True, slots=True)
class TestRun:
    """What one BPF_PROG_TEST_RUN gave back: the return value and the packet after the
    run (without the Ethernet header `test_run` put in front)."""

    retval: int
    packet: bytes

    __test__ = False  # not a pytest test class when imported into a test module


def _ethertype(packet: bytes) -> int:
    """The kernel refuses an IPv4/IPv6 ethertype with less than a fixed IP header
    behind it; ztun's programs read only the bytes (never skb->protocol), so shorter
    packets go under ETH_P_802_EX1, which the kernel takes as it is."""
    version = packet[0] >> 4 if packet else 0
    if version == 6 and len(packet) >= IP6_HEADER:
        return ETH_P_IPV6
    if version != 6 and len(packet) >= IP4_MIN_HEADER:
        return ETH_P_IP
    return ETH_P_802_EX1


def test_run(prog_fd: int, packet: bytes, *, flags: int = 0, want_packet: bool = False) -> TestRun:
    """Run a program once on `packet` (an IP packet) with BPF_PROG_TEST_RUN.

    Both program types ztun loads take an Ethernet frame here (net/bpf/test_run.c): a
    socket filter sees the packet after the header is pulled, a tc classifier sees the
    header in front of it (its IP header at offset ETH_HLEN). `flags` are
    BPF_F_TEST_* (e.g. BPF_F_TEST_SKB_CHECKSUM_COMPLETE)."""
    frame = bytes(12) + struct.pack("!H", _ethertype(packet)) + bytes(packet)
    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) if want_packet else 0)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(frame),
        data_in=_address(data),
        repeat=1,
        flags=flags,
    )
    if want_packet:
        attr.data_size_out, attr.data_out = len(frame), _address(out)
    err = bpf(BPF_PROG_TEST_RUN, attr)
    if err < 0:
        raise BpfError(-err, f"BPF_PROG_TEST_RUN: {os.strerror(-err)}")
    got = out.raw[ETH_HLEN : attr.data_size_out] if want_packet else b""
    return TestRun(int(attr.retval), got)


test_run.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


# --------------------------------------------------------------------------- maps


def map_create(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: bytes, flags: int = 0
) -> int:
    """Create a map; return its fd."""
    attr = _MapCreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name[: BPF_OBJ_NAME_LEN - 1],
    )
    fd = bpf(BPF_MAP_CREATE, attr)
    if fd < 0:
        raise BpfError(-fd, f"BPF_MAP_CREATE: {os.strerror(-fd)}{_permission_hint(-fd)}")
    return fd


def _elem(
    cmd: int, map_fd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int
) -> int:
    """One BPF_MAP_*_ELEM call; the buffers live in the caller until it returns."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    attr = _MapElemAttr(
        map_fd=map_fd,
        key=_address(key_buf),
        value=_address(value) if value is not None else 0,
        flags=flags,
    )
    return bpf(cmd, attr)


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    err = _elem(
        BPF_MAP_UPDATE_ELEM, map_fd, key, ctypes.create_string_buffer(value, len(value)), flags
    )
    if err < 0:
        raise BpfError(-err, f"BPF_MAP_UPDATE_ELEM: {os.strerror(-err)}")


def map_update_batch(
    map_fd: int, keys: Sequence[bytes], values: Sequence[bytes], flags: int = BPF_ANY
) -> None:
    """Several updates in one call (keys and values of the map's sizes, in order)."""
    key_buf = ctypes.create_string_buffer(b"".join(keys))
    value_buf = ctypes.create_string_buffer(b"".join(values))
    attr = _MapBatchAttr(
        keys=_address(key_buf),
        values=_address(value_buf),
        count=len(keys),
        map_fd=map_fd,
        elem_flags=flags,
    )
    err = bpf(BPF_MAP_UPDATE_BATCH, attr)
    if err < 0:
        raise BpfError(-err, f"BPF_MAP_UPDATE_BATCH: {os.strerror(-err)} ({attr.count} done)")


def map_lookup_and_delete(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """Remove `key`, returning its last value (None: there was none) -- one call, so
    nothing the program adds between a lookup and a delete is lost."""
    value_buf = ctypes.create_string_buffer(value_size)
    err = _elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, map_fd, key, value_buf, 0)
    if err == -errno.ENOENT:
        return None
    if err < 0:
        raise BpfError(-err, f"BPF_MAP_LOOKUP_AND_DELETE_ELEM: {os.strerror(-err)}")
    return value_buf.raw


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under `key`, or None when there is none."""
    value_buf = ctypes.create_string_buffer(value_size)
    err = _elem(BPF_MAP_LOOKUP_ELEM, map_fd, key, value_buf, 0)
    if err == -errno.ENOENT:
        return None
    if err < 0:
        raise BpfError(-err, f"BPF_MAP_LOOKUP_ELEM: {os.strerror(-err)}")
    return value_buf.raw


def map_delete(map_fd: int, key: bytes) -> bool:
    """Remove `key`; False when it was not there."""
    err = _elem(BPF_MAP_DELETE_ELEM, map_fd, key, None, 0)
    if err == -errno.ENOENT:
        return False
    if err < 0:
        raise BpfError(-err, f"BPF_MAP_DELETE_ELEM: {os.strerror(-err)}")
    return True
