"""QemuHost: a Debian 12 guest under qemu-system-x86_64, restored from a saved state per test.

Cost model (why it is built this way).  Under TCG a cold boot to SSH takes tens of seconds;
a test should not pay that.  So the guest is booted *once* per machine (per image, QEMU
version and accelerator), provisioned (a venv with the harness's wheels), and its whole
machine state is saved with QEMU's migration-to-file over a qcow2 overlay of the read-only
image.  Each test then starts QEMU with ``-incoming`` from that file over a fresh overlay
of its own, which reaches SSH in a few seconds.  After the restore the guest clock is set
(it resumes at the instant of the save) and the repository is mounted read-only over 9p
(mounting it before the save would block migration, and would pin a stale path).

Network safety: the guest only gets QEMU user-mode networking with ``restrict=on`` (no
route out of the guest at all), no IPv6 (``ipv6=off``: no router advertisements either),
and one port forward to its sshd bound to 127.0.0.1.  No bridge, no tap, nothing in the
root namespace.

KVM: on some machines ``/dev/kvm`` exists but hangs stock kernels (a PVM nested
hypervisor here).  :func:`accelerator` decides by a bounded trial boot and caches the
verdict; ``ZTUN_VM_ACCEL=tcg|kvm`` overrides it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import paramiko

from harness import vmimage
from harness.hosts.ssh import SshError, SshHost, connect
from ztun.tools import guest_tool, tool

log = logging.getLogger("harness.vm")

QEMU = tool("qemu-system-x86_64")
MEMORY_MIB = 1024
#: Two vCPUs: multi-threaded TCG then uses both host cores.
SMP = 2
USER = "root"
SHARE_TAG = "repo"
GUEST_SHARE = "/mnt/repo"
GUEST_VENV = "/opt/ztun"

COLD_BOOT_TIMEOUT = 300.0
"""Cold boot to SSH: ~25 s under TCG here; generous for slow CI runners."""
KVM_TRIAL_TIMEOUT = 45.0
"""A working KVM reaches SSH in a few seconds; a hanging one never does."""
RESTORE_TIMEOUT = 90.0
SAVE_TIMEOUT = 180.0
PROVISION_TIMEOUT = 600.0
QMP_TIMEOUT = 10.0
QUIT_TIMEOUT = 10.0
PORT_ATTEMPTS = 5
"""A free port is picked then handed to QEMU; another process may win it meanwhile."""
CONSOLE_TAIL = 3000
"""Characters of the serial console quoted when a boot fails."""

#: Packages the guest does not need to run ztun or the conformance suite.
_HOST_ONLY_REQUIREMENTS = {"python-vagrant", "pytest-testinfra", "paramiko"}


class QemuError(RuntimeError):
    """QEMU could not start, boot, save or restore; the message quotes the console."""


# --------------------------------------------------------------------------- QMP


class Qmp:
    """Just enough of the QEMU Machine Protocol: commands in, replies out, events skipped."""

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = QMP_TIMEOUT,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self._sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                # QEMU creates the socket while it starts; nothing to wait on but the path.
                if process is not None and process.poll() is not None:
                    raise QemuError(f"qemu exited with {process.returncode}") from None
                if time.monotonic() > deadline:
                    raise QemuError(f"QMP socket {path} did not appear") from None
                time.sleep(0.02)  # noqa: sleep-ok - no event for a path appearing
        self._sock.settimeout(timeout)
        self._file = self._sock.makefile("rwb")
        self._read()  # greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self._file.readline()
            if not line:
                raise QemuError("QMP connection closed")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message

    def command(self, name: str, **arguments: Any) -> Any:
        payload: dict[str, Any] = {"execute": name}
        if arguments:
            payload["arguments"] = arguments
        self._file.write(json.dumps(payload).encode() + b"\n")
        self._file.flush()
        reply = self._read()
        if "error" in reply:
            raise QemuError(f"QMP {name}: {reply['error']}")
        return reply.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


# --------------------------------------------------------------------------- one QEMU


def qemu_version() -> str:
    """``QEMU emulator version X`` line; part of the saved-state key (states don't port)."""
    done = subprocess.run(
        [QEMU, "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.splitlines()[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclasses.dataclass
class Machine:
    """One qemu-system-x86_64 process and its files (overlay, QMP socket, console log).

    The device set is identical for the boot that saves and for every restore (a
    migration stream only loads into the same machine); only host-side paths and the
    forwarded port may differ.
    """

    image: vmimage.GuestImage
    accel: str
    disk: Path
    workdir: Path
    share: Path | None = None
    incoming: Path | None = None
    ssh_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    qmp: Qmp | None = None
    _qmp_dir: Path | None = None

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    @property
    def qmp_path(self) -> Path:
        # UNIX socket paths are limited to 107 bytes: a cache path can be longer.
        if self._qmp_dir is None:
            self._qmp_dir = Path(tempfile.mkdtemp(prefix="ztun-qmp-"))
        return self._qmp_dir / "qmp.sock"

    def argv(self) -> list[str]:
        cpu = "host" if self.accel == "kvm" else "max"
        share = self.share if self.share is not None else self.workdir
        argv = [
            QEMU,
            "-name",
            f"ztun-{self.workdir.name}",
            "-nodefaults",
            "-no-user-config",
            "-machine",
            f"q35,accel={self.accel}",
            "-cpu",
            cpu,
            "-smp",
            str(SMP),
            "-m",
            str(MEMORY_MIB),
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            self.image.cmdline,
            # cache=unsafe: the overlay is thrown away, so flushes would only cost time.
            "-drive",
            f"file={self.disk},if=none,id=root,format=qcow2,cache=unsafe",
            "-device",
            "virtio-blk-pci,drive=root",
            "-netdev",
            f"user,id=net0,restrict=on,ipv6=off,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device",
            "virtio-net-pci,netdev=net0",
            "-fsdev",
            f"local,id=repo,path={share},security_model=none,readonly=on",
            "-device",
            f"virtio-9p-pci,fsdev=repo,mount_tag={SHARE_TAG}",
            "-display",
            "none",
            "-vga",
            "none",
            "-serial",
            f"file:{self.console}",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if self.incoming is not None:
            argv += ["-incoming", f"exec:cat {self.incoming}"]
        return argv

    def start(self) -> None:
        """Start QEMU with a free loopback port for SSH; retried if the port was taken."""
        for _ in range(PORT_ATTEMPTS):
            self.ssh_port = _free_port()
            self.qmp_path.unlink(missing_ok=True)
            stderr = (self.workdir / "qemu.stderr").open("wb")
            # setpriv --pdeathsig: QEMU dies with the test process even on SIGKILL, so an
            # interrupted run leaves no guest behind.
            self.process = subprocess.Popen(
                [tool("setpriv"), "--pdeathsig", "KILL", *self.argv()],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
            stderr.close()
            try:
                self.qmp = Qmp(self.qmp_path, process=self.process)
                return
            except (QemuError, OSError) as exc:
                log.debug("QMP connection failed: %r", exc)
                self.process.kill()
                self.process.wait(timeout=QUIT_TIMEOUT)
                text = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
                if "host forwarding" not in text:
                    raise QemuError(f"qemu failed to start ({exc}): {text}") from None
        raise QemuError(f"no free loopback port for SSH after {PORT_ATTEMPTS} attempts")

    def check_alive(self) -> None:
        """Raise with the console tail if QEMU has exited (used while awaiting SSH)."""
        if self.process is not None and self.process.poll() is not None:
            raise QemuError(
                f"qemu exited with {self.process.returncode} "
                f"({(self.workdir / 'qemu.stderr').read_text(errors='replace').strip()})\n"
                f"console:\n{self.console_tail()}"
            )

    def console_tail(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-CONSOLE_TAIL:]
        except OSError:
            return "(no console output)"

    def connect(self, timeout: float) -> paramiko.SSHClient:
        try:
            return connect(
                "127.0.0.1",
                self.ssh_port,
                username=USER,
                key_path=self.image.private_key,
                timeout=timeout,
                check=self.check_alive,
            )
        except SshError as exc:
            raise QemuError(f"{exc}\nconsole:\n{self.console_tail()}") from exc

    def save(self, target: Path) -> None:
        """Stop the guest and stream its state to ``target`` (QEMU migration to a file)."""
        assert self.qmp is not None
        self.qmp.command("stop")
        partial = target.with_suffix(".partial")
        self.qmp.command("migrate", uri=f"exec:cat > {partial}")
        deadline = time.monotonic() + SAVE_TIMEOUT
        while True:
            status = self.qmp.command("query-migrate").get("status")
            if status == "completed":
                break
            if status in {"failed", "cancelled"} or time.monotonic() > deadline:
                raise QemuError(f"saving the guest state ended with status {status!r}")
            # Migration progress has no event in QEMU 7.2's default caps: a short poll.
            time.sleep(0.05)  # noqa: sleep-ok - QMP has no progress event here
        partial.rename(target)

    def resume_incoming(self, timeout: float) -> None:
        """Wait for the incoming state to load, then run the guest.

        The state was saved from a stopped guest (no dirty-page rounds), so it also
        loads stopped: it needs an explicit ``cont``.
        """
        assert self.qmp is not None
        deadline = time.monotonic() + timeout
        while (status := self.qmp.command("query-status")["status"]) == "inmigrate":
            self.check_alive()
            if time.monotonic() > deadline:
                raise QemuError(f"loading the saved state took over {timeout:.0f} s")
            # QEMU 7.2 reports the load's end only by status or an event we'd have to
            # subscribe to before it starts; a 20 ms poll of a local socket is cheap.
            time.sleep(0.02)  # noqa: sleep-ok - see above: status is polled
        if status != "paused":
            raise QemuError(f"guest is {status!r} after loading the saved state")
        self.qmp.command("cont")

    def stop(self) -> None:
        """Quit QEMU (politely over QMP, then by signal); idempotent."""
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.command("quit")
            self.qmp.close()
            self.qmp = None
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(timeout=QUIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=QUIT_TIMEOUT)
        if self._qmp_dir is not None:
            shutil.rmtree(self._qmp_dir, ignore_errors=True)
            self._qmp_dir = None
        if self._qmp_dir is not None:
            shutil.rmtree(self._qmp_dir, ignore_errors=True)
            self._qmp_dir = None


# --------------------------------------------------------------------------- accelerator


def _accel_cache(image: vmimage.GuestImage) -> Path:
    key = hashlib.sha256(
        f"{os.uname().release}|{qemu_version()}|{image.recipe_hash}".encode()
    ).hexdigest()[:16]
    return vmimage.cache_root() / f"accel-{key}.json"


def accelerator(image: vmimage.GuestImage | None = None) -> str:
    """``kvm`` if KVM really runs a guest here, else ``tcg``; the verdict is cached.

    Two stages: a one-second probe that runs a 9-byte firmware under KVM (no image
    needed, so a machine whose KVM cannot even start a vCPU learns it without building
    anything), then a bounded trial boot of the real guest to SSH (a KVM that starts but
    hangs a stock kernel, like a PVM nested hypervisor, fails here).
    """
    forced = os.environ.get("ZTUN_VM_ACCEL")
    if forced in {"kvm", "tcg"}:
        log.info("accelerator %s (forced by ZTUN_VM_ACCEL)", forced)
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log.info("accelerator tcg: /dev/kvm not usable")
        return "tcg"
    ok, reason = probe_kvm()
    if not ok:
        log.info("accelerator tcg (%s)", reason)
        return "tcg"
    image = image or vmimage.ensure_image()
    cache = _accel_cache(image)
    with vmimage.locked(cache.with_suffix(".lock")):
        if cache.is_file():
            verdict = json.loads(cache.read_text())
            log.info("accelerator %s (cached trial: %s)", verdict["accel"], verdict["reason"])
            return str(verdict["accel"])
        accel, reason = _trial_kvm(image)
        cache.write_text(json.dumps({"accel": accel, "reason": reason}) + "\n")
        log.info("accelerator %s (%s)", accel, reason)
        return accel


#: Real-mode code at the reset vector (F000:FFF0): ``mov dx,0x3f8; mov al,'K';
#: out dx,al; hlt; jmp $-1`` -- one byte on the serial port proves a vCPU ran.
_PROBE_CODE = bytes.fromhex("baf803b04beef4ebfd")
_PROBE_ROM_SIZE = 0x10000
_RESET_VECTOR_OFFSET = 0xFFF0
PROBE_TIMEOUT = 10.0


def probe_kvm(accel: str = "kvm") -> tuple[bool, str]:
    """Run a 9-byte firmware under ``accel``; True once it wrote to the serial port."""
    rom = bytearray(_PROBE_ROM_SIZE)
    rom[_RESET_VECTOR_OFFSET : _RESET_VECTOR_OFFSET + len(_PROBE_CODE)] = _PROBE_CODE
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        bios = Path(tmp) / "probe.rom"
        bios.write_bytes(rom)
        cpu = ["-cpu", "host"] if accel == "kvm" else []
        argv = [
            QEMU,
            "-nodefaults",
            "-no-user-config",
            "-machine",
            f"q35,accel={accel}",
            *cpu,
            "-m",
            "16",
            "-display",
            "none",
            "-bios",
            str(bios),
            "-serial",
            "stdio",
        ]
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as qemu:
            assert qemu.stdout is not None and qemu.stderr is not None
            os.set_blocking(qemu.stdout.fileno(), True)
            ready, _, _ = select.select([qemu.stdout], [], [], PROBE_TIMEOUT)
            byte = qemu.stdout.read(1) if ready else b""
            qemu.kill()
            err = qemu.stderr.read().decode(errors="replace")
    if byte == b"K":
        return True, f"{accel} ran the probe firmware"
    why = " ".join(err.split())[:300] or f"no output within {PROBE_TIMEOUT:.0f} s"
    return False, f"{accel} probe failed: {why}"


def _trial_kvm(image: vmimage.GuestImage) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="kvm-trial-") as tmp:
        work = Path(tmp)
        disk = work / "disk.qcow2"
        _overlay(image.rootfs, disk, backing_format="raw")
        machine = Machine(image=image, accel="kvm", disk=disk, workdir=work)
        started = time.monotonic()
        try:
            machine.start()
            client = machine.connect(KVM_TRIAL_TIMEOUT)
            client.close()
            return "kvm", f"trial boot reached SSH in {time.monotonic() - started:.1f} s"
        except QemuError as exc:
            first = " ".join(str(exc).split("console:")[0].split())[:300]
            return "tcg", f"KVM trial boot failed within {KVM_TRIAL_TIMEOUT:.0f} s: {first}"
        finally:
            machine.stop()


# --------------------------------------------------------------------------- saved state


def _overlay(backing: Path, path: Path, *, backing_format: str) -> None:
    subprocess.run(
        [
            tool("qemu-img"),
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            backing_format,
            "-b",
            str(backing),
            str(path),
        ],
        check=True,
        timeout=30,
        capture_output=True,
    )


def guest_requirements() -> list[str]:
    """What the guest venv needs to run ztun and the harness: deps + harness extra.

    Read from the installed distribution's metadata, so an installed wheel (no
    pyproject.toml anywhere) provisions the same guest as a checkout.
    """
    wanted = []
    for line in importlib.metadata.requires("ztun") or []:
        requirement, _, marker = line.partition(";")
        if not marker.strip() or marker.replace("'", '"').split() == ["extra", "==", '"harness"']:
            wanted.append(requirement.strip())
    return sorted(r for r in wanted if _req_name(r) not in _HOST_ONLY_REQUIREMENTS)


def _req_name(requirement: str) -> str:
    for mark in "<>=!~[; ":
        requirement = requirement.split(mark, 1)[0]
    return requirement.strip().lower()


#: The guest's interpreter (Debian 12 ships CPython 3.11) and C library (glibc 2.36):
#: wheels are chosen for *it*, whatever Python the host runs.
GUEST_PYTHON = "3.11"
_GUEST_WHEEL_TAGS = (
    "--only-binary=:all:",
    "--implementation",
    "cp",
    "--python-version",
    GUEST_PYTHON,
    "--abi",
    "cp311",
    "--platform",
    "manylinux_2_36_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux2014_x86_64",
)
#: Bump when the guest venv or the machine's device set changes: it is part of the
#: saved-state key (a state only loads into the machine it was saved from).
#: 3: user-mode network without IPv6 (its router advertisements kept changing the guest's
#: routes under the harness's leak check).
PROVISION_VERSION = "3"


def ensure_guest_packages(requirements: list[str]) -> Path:
    """A tarball of site-packages for the guest venv, built on the host.

    The guest has no network, and pip under TCG spends minutes resolving.  So the host
    downloads wheels for the guest's Python and platform (whatever its own Python is) and
    installs them into a staging folder with ``pip install --target``; the guest only
    unpacks a tar and byte-compiles it once, before its state is saved.
    """
    key = "\n".join([*requirements, *_GUEST_WHEEL_TAGS])
    house = vmimage.cache_root() / f"wheels-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    tarball = house / "site-packages.tar"
    with vmimage.locked(house.with_suffix(".lock")):
        if tarball.is_file():
            return tarball
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir(parents=True)
        python = os.environ.get("ZTUN_VM_PYTHON", _host_python())
        staging = house / "staging"
        pip = [python, "-m", "pip", "-q", "--disable-pip-version-check"]
        for argv in (
            [*pip, "download", *_GUEST_WHEEL_TAGS, "--dest", str(house), *requirements],
            [
                *pip,
                "install",
                *_GUEST_WHEEL_TAGS,
                "--no-index",
                "--find-links",
                str(house),
                "--no-compile",
                "--target",
                str(staging),
                *requirements,
            ],
        ):
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=PROVISION_TIMEOUT, check=False
            )
            if done.returncode != 0:
                raise QemuError(f"{' '.join(argv[4:6])} failed:\n{done.stderr[-3000:]}")
        # Console scripts carry the host's interpreter path: the guest runs `python -m`.
        shutil.rmtree(staging / "bin", ignore_errors=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            [tool("tar"), "-cf", str(partial), "-C", str(staging), "."],
            check=True,
            timeout=PROVISION_TIMEOUT,
        )
        shutil.rmtree(staging)
        partial.rename(tarball)
        return tarball


def _host_python() -> str:
    import sys

    return sys.executable


@dataclasses.dataclass(frozen=True, slots=True)
class SavedState:
    """A booted, provisioned guest frozen to disk: overlay + migration stream + timings."""

    directory: Path
    accel: str
    disk: Path
    vmstate: Path
    boot_seconds: float
    provision_seconds: float
    save_seconds: float
    vmstate_bytes: int


def _state_key(image: vmimage.GuestImage, accel: str, requirements: list[str]) -> str:
    parts = [
        image.recipe_hash,
        hashlib.sha256(guest_entry_points().encode()).hexdigest(),  # frozen into the state
        qemu_version(),
        accel,
        str(MEMORY_MIB),
        str(SMP),
        PROVISION_VERSION,
        *requirements,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def ensure_state(image: vmimage.GuestImage, accel: str, *, rebuild: bool = False) -> SavedState:
    """The saved state for this image and accelerator, cold-booting and saving it once."""
    requirements = guest_requirements()
    directory = image.directory / f"state-{accel}-{_state_key(image, accel, requirements)}"
    with vmimage.locked(directory.with_suffix(".lock")):
        meta = directory / "meta.json"
        if meta.is_file() and not rebuild:
            return _load_state(directory)
        wheels = ensure_guest_packages(requirements)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return _boot_and_save(image, accel, directory, wheels, requirements)


def _load_state(directory: Path) -> SavedState:
    data = json.loads((directory / "meta.json").read_text())
    return SavedState(
        directory=directory,
        accel=data["accel"],
        disk=directory / "disk.qcow2",
        vmstate=directory / "vmstate",
        boot_seconds=data["boot_seconds"],
        provision_seconds=data["provision_seconds"],
        save_seconds=data["save_seconds"],
        vmstate_bytes=data["vmstate_bytes"],
    )


def _boot_and_save(
    image: vmimage.GuestImage, accel: str, directory: Path, wheels: Path, requirements: list[str]
) -> SavedState:
    disk = directory / "disk.qcow2"
    _overlay(image.rootfs, disk, backing_format="raw")
    machine = Machine(image=image, accel=accel, disk=disk, workdir=directory)
    started = time.monotonic()
    try:
        machine.start()
        client = machine.connect(COLD_BOOT_TIMEOUT)
        boot_seconds = time.monotonic() - started
        log.info("cold boot (%s) to SSH in %.1f s", accel, boot_seconds)
        started = time.monotonic()
        with SshHost("provision", client, directory / "logs") as guest:
            _provision(guest, wheels)
            # Quiesce before the save: nothing half-written may sit in the guest's cache,
            # and a dropped page cache makes the state file (and every restore) smaller.
            guest.run(
                [
                    guest_tool("sh"),
                    "-c",
                    f"{guest_tool('sync')} && echo 3 > /proc/sys/vm/drop_caches",
                ],
                check=True,
            )
        provision_seconds = time.monotonic() - started
        started = time.monotonic()
        machine.save(directory / "vmstate")
        save_seconds = time.monotonic() - started
    finally:
        machine.stop()
    disk.chmod(0o444)
    vmstate = directory / "vmstate"
    meta = {
        "accel": accel,
        "boot_seconds": round(boot_seconds, 1),
        "provision_seconds": round(provision_seconds, 1),
        "save_seconds": round(save_seconds, 1),
        "vmstate_bytes": vmstate.stat().st_size,
        "requirements": requirements,
        "qemu": qemu_version(),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info(
        "guest state saved: boot %.1f s, provision %.1f s, save %.1f s",
        boot_seconds,
        provision_seconds,
        save_seconds,
    )
    return _load_state(directory)


def _provision(guest: SshHost, packages: Path) -> None:
    """A venv at /opt/ztun whose site-packages come from the host-built tarball."""
    guest.run(
        [guest_tool("python3"), "-m", "venv", "--without-pip", GUEST_VENV],
        timeout=PROVISION_TIMEOUT,
        check=True,
    )
    remote = f"/tmp/{packages.name}"
    guest.put(packages, remote)
    site = guest.run(
        [
            f"{GUEST_VENV}/bin/python3",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
    ).stdout.strip()
    guest.run([guest_tool("tar"), "-xf", remote, "-C", site], timeout=PROVISION_TIMEOUT, check=True)
    guest.run([guest_tool("rm"), "-f", remote], check=True)
    # Compile once here, so every restored guest imports from bytecode.
    guest.run(
        [f"{GUEST_VENV}/bin/python3", "-m", "compileall", "-q", "-j", "0", site],
        timeout=PROVISION_TIMEOUT,
        check=True,
    )
    _link_repository(guest, site)
    # Prove the venv works before it is frozen into the saved state.
    guest.run(
        [f"{GUEST_VENV}/bin/python3", "-c", "import pytest, scapy, pyroute2"],
        timeout=PROVISION_TIMEOUT,
        check=True,
    )


_DIST_INFO = "ztun-0.0.0+share.dist-info"


def guest_entry_points() -> str:
    """The installed distribution's entry points (console scripts, the pytest plugin, the
    tun2socks adapters), for the guest's stand-in dist-info: the guest runs this very code,
    so it declares what this install declares."""
    return importlib.metadata.distribution("ztun").read_text("entry_points.txt") or ""


_ZTUN_SCRIPT = f"""#!{GUEST_VENV}/bin/python3
import sys

from ztun.cli import main

sys.exit(main())
"""


def _link_repository(guest: SshHost, site: str) -> None:
    """Make the venv see this checkout at /mnt/repo as the installed ``ztun`` distribution.

    The share is read-only and changes with every commit, so nothing of it is copied:
    a ``.pth`` line puts it on ``sys.path`` and a small dist-info declares the entry
    points, so ``ztun`` runs and pytest loads the harness plugin as in a normal install.
    """
    dist = f"{site}/{_DIST_INFO}"
    guest.run([guest_tool("mkdir"), "-p", dist], check=True)
    guest.write_file(f"{site}/ztun-share.pth", f"{GUEST_SHARE}\n")
    guest.write_file(
        f"{dist}/METADATA", "Metadata-Version: 2.1\nName: ztun\nVersion: 0.0.0+share\n"
    )
    guest.write_file(f"{dist}/entry_points.txt", guest_entry_points())
    guest.write_file(f"{dist}/INSTALLER", "ztun-harness\n")
    guest.write_file(f"{dist}/RECORD", "")
    guest.write_file(f"{GUEST_VENV}/bin/ztun", _ZTUN_SCRIPT)
    guest.run([guest_tool("chmod"), "755", f"{GUEST_VENV}/bin/ztun"], check=True)


# --------------------------------------------------------------------------- the host


class QemuHost(SshHost):
    """A guest restored from the saved state (or cold-booted), behind the Host protocol.

    Use :meth:`start`; :meth:`close` powers the guest off and removes its overlay, and
    the pytest fixture calls it also when the test fails.
    """

    def __init__(
        self,
        name: str,
        client: paramiko.SSHClient,
        log_dir: Path,
        machine: Machine,
        timings: dict[str, float],
    ) -> None:
        super().__init__(name, client, log_dir)
        self.machine = machine
        #: Measured seconds: ``restore_to_ssh`` or ``boot_to_ssh``, ``clock``, ``mount``.
        self.timings = timings

    @property
    def ssh_port(self) -> int:
        """The loopback port forwarded to the guest's sshd (for testinfra/paramiko)."""
        return self.machine.ssh_port

    @property
    def ssh_key(self) -> Path:
        """The test key that logs in as root (lives in the image cache, never in git)."""
        return self.machine.image.private_key

    @property
    def accel(self) -> str:
        return self.machine.accel

    @classmethod
    def start(
        cls,
        name: str,
        log_dir: Path,
        *,
        image: vmimage.GuestImage | None = None,
        accel: str | None = None,
        share: Path | None = vmimage.REPO_ROOT,
        cold: bool = False,
    ) -> QemuHost:
        """Restore a guest from the saved state (``cold=True``: boot it from scratch)."""
        image = image or vmimage.ensure_image()
        accel = accel or accelerator(image)
        workdir = Path(tempfile.mkdtemp(prefix=f"ztun-qemu-{name}-"))
        machine: Machine | None = None
        try:
            if cold:
                disk = workdir / "disk.qcow2"
                _overlay(image.rootfs, disk, backing_format="raw")
                machine = Machine(image=image, accel=accel, disk=disk, workdir=workdir, share=share)
                budget = COLD_BOOT_TIMEOUT
            else:
                state = ensure_state(image, accel)
                disk = workdir / "disk.qcow2"
                _overlay(state.disk, disk, backing_format="qcow2")
                machine = Machine(
                    image=image,
                    accel=accel,
                    disk=disk,
                    workdir=workdir,
                    share=share,
                    incoming=state.vmstate,
                )
                budget = RESTORE_TIMEOUT
            started = time.monotonic()
            machine.start()
            if machine.incoming is not None:
                machine.resume_incoming(budget)
            client = machine.connect(budget - (time.monotonic() - started))
            timings = {("boot_to_ssh" if cold else "restore_to_ssh"): time.monotonic() - started}
            host = cls(name, client, log_dir, machine, timings)
        except BaseException:
            if machine is not None:
                machine.stop()
            _keep_console(workdir, log_dir)
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        try:
            host._after_resume(share)
        except BaseException:
            host.close()
            raise
        log.info(
            "%s up (%s): %s",
            name,
            accel,
            ", ".join(f"{k} {v:.2f} s" for k, v in host.timings.items()),
        )
        return host

    def _after_resume(self, share: Path | None) -> None:
        started = time.monotonic()
        # The guest resumes at the instant of the save: give it the host's time.
        self.run([guest_tool("date"), "-u", "-s", f"@{time.time():.3f}"], check=True)
        self.timings["clock"] = time.monotonic() - started
        if share is not None:
            started = time.monotonic()
            self.run(
                [
                    guest_tool("mount"),
                    "-t",
                    "9p",
                    "-o",
                    "trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose",
                    SHARE_TAG,
                    GUEST_SHARE,
                ],
                check=True,
            )
            self.timings["mount"] = time.monotonic() - started

    def _shutdown(self) -> None:
        workdir = self.machine.workdir
        self.machine.stop()
        _keep_console(workdir, self.log_dir)
        shutil.rmtree(workdir, ignore_errors=True)


def _keep_console(workdir: Path, log_dir: Path) -> None:
    """Copy the serial console next to the test's logs before the workdir goes."""
    console = workdir / "console.log"
    if console.is_file():
        log_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(console, log_dir / "console.log")
