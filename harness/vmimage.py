"""The Debian 12 guest image: built from Debian packages alone, cached by a hash of its recipe.

The recipe is everything under ``harness/vms/image/`` (the package list and the customize
hook), package data of the harness: an installed wheel builds the same image.
Its sha256 names the cache folder ``~/.cache/ztun/vms/<hash>/``, so an image is built once
per machine and per recipe, and a changed recipe can never be served a stale image.

The image is a raw ext4 file system (no partition table, no bootloader) plus the kernel and
initrd taken out of it: QEMU boots the kernel directly, which is simpler and faster under
TCG than firmware + GRUB, and ``mke2fs -d`` builds the file system without mounting
anything.  The base is read-only; every VM writes to its own qcow2 overlay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ztun.tools import tool

log = logging.getLogger("harness.vm")

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout (or, installed, the site-packages folder) that holds ztun and harness:
what a guest mounts to run this very code."""
RECIPE_DIR = Path(__file__).resolve().parent / "vms" / "image"
SUITE = "bookworm"
#: Size of the ext4 file system; sparse, so the file only takes what is written.
ROOTFS_SIZE = "3G"
#: mmdebstrap downloads and unpacks ~400 packages; 20 min is far beyond a normal build.
BUILD_TIMEOUT = 1200.0
MANIFEST = "manifest.json"

# Docs, man pages and translations are never read in a test guest: keep them out.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says which step and shows its output."""


@dataclasses.dataclass(frozen=True, slots=True)
class GuestImage:
    """A built image in the cache: read-only base file system, kernel, initrd and test key."""

    directory: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    private_key: Path
    public_key: Path
    recipe_hash: str
    build_seconds: float
    #: Bytes the sparse root file system really occupies on disk.
    rootfs_bytes: int

    #: Kernel command line.  ``net.ifnames=0`` gives ``eth0`` under QEMU and libvirt alike;
    #: ``mitigations=off`` saves TCG time on a throw-away guest.
    cmdline: str = (
        "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 mitigations=off "
        "random.trust_cpu=on systemd.show_status=0 quiet panic=-1"
    )


def cache_root() -> Path:
    """``$ZTUN_VM_CACHE`` or ``~/.cache/ztun/vms`` (XDG_CACHE_HOME honoured)."""
    if env := os.environ.get("ZTUN_VM_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ztun" / "vms"


def recipe_files(recipe_dir: Path = RECIPE_DIR) -> list[Path]:
    """The files whose content defines the image, in a stable order."""
    return sorted(p for p in recipe_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def recipe_hash(recipe_dir: Path = RECIPE_DIR) -> str:
    """sha256 over (relative name, content) of every recipe file and the suite name."""
    digest = hashlib.sha256(SUITE.encode())
    for path in recipe_files(recipe_dir):
        digest.update(str(path.relative_to(recipe_dir)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def packages(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    """Package names from ``packages.txt`` (comments and blank lines ignored)."""
    lines = (recipe_dir / "packages.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` so parallel workers build or save only once."""
    import fcntl  # POSIX only: imported here so the module loads on any OS

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], *, timeout: float, step: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{step}: {argv[0]} not found (apt-get install it)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{step}: timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise ImageBuildError(f"{step} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def load(directory: Path) -> GuestImage | None:
    """The image described by ``directory/manifest.json``, or None if not (fully) built."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    image = GuestImage(
        directory=directory,
        rootfs=directory / "rootfs.ext4",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        private_key=directory / "id_ed25519",
        public_key=directory / "id_ed25519.pub",
        recipe_hash=data["recipe_hash"],
        build_seconds=float(data["build_seconds"]),
        rootfs_bytes=int(data["rootfs_bytes"]),
    )
    needed = (image.rootfs, image.kernel, image.initrd, image.private_key)
    return image if all(p.is_file() for p in needed) else None


def ensure_image(*, rebuild: bool = False) -> GuestImage:
    """Return the cached image for the current recipe, building it first if needed."""
    digest = recipe_hash()
    directory = cache_root() / digest
    with locked(cache_root() / f"{digest}.lock"):
        if not rebuild and (image := load(directory)) is not None:
            log.info("guest image cached: %s", directory)
            return image
        return _build(directory, digest)


def _build(directory: Path, digest: str) -> GuestImage:
    if shutil.which(tool("mmdebstrap")) is None:
        raise ImageBuildError("mmdebstrap not found: apt-get install mmdebstrap")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    started = time.monotonic()
    key = directory / "id_ed25519"
    _run(
        [
            tool("ssh-keygen"),
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ztun-test-guest",
            "-f",
            str(key),
        ],
        timeout=30,
        step="ssh-keygen",
    )
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=directory) as tmp:
        rootdir = Path(tmp) / "root"
        argv = [
            tool("mmdebstrap"),
            "--variant=apt",
            "--mode=root",
            "--include=" + ",".join(packages()),
            *[f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES],
            "--customize-hook=" + f'sh {RECIPE_DIR / "customize.sh"} "$1"',
            SUITE,
            str(rootdir),
        ]
        env = dict(os.environ, ZTUN_VM_PUBKEY=str(key) + ".pub")
        log.info("building guest image: %s", " ".join(argv))
        _run(argv, timeout=BUILD_TIMEOUT, step="mmdebstrap", env=env)
        # The kernel and initrd boot the guest directly; take the versioned files out.
        boot = rootdir / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        initrds = sorted(boot.glob("initrd.img-*"))
        if not kernels or not initrds:
            raise ImageBuildError(f"no kernel/initrd in {boot}: is linux-image-amd64 listed?")
        shutil.copyfile(kernels[-1], directory / "vmlinuz")
        shutil.copyfile(initrds[-1], directory / "initrd.img")
        rootfs = directory / "rootfs.ext4"
        _run(
            [
                tool("mke2fs"),
                "-q",
                "-t",
                "ext4",
                "-L",
                "ztunroot",
                "-d",
                str(rootdir),
                str(rootfs),
                ROOTFS_SIZE,
            ],
            timeout=600,
            step="mke2fs",
        )
    rootfs.chmod(0o444)
    seconds = time.monotonic() - started
    used = rootfs.stat().st_blocks * 512
    manifest = {
        "recipe_hash": digest,
        "suite": SUITE,
        "build_seconds": round(seconds, 1),
        "rootfs_bytes": used,
        "kernel": kernels[-1].name,
        "packages": packages(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    image = load(directory)
    assert image is not None, "manifest written last, so the image is complete"
    log.info("guest image built in %.0f s, %d MiB", seconds, used >> 20)
    return image
