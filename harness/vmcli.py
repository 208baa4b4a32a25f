"""``python -m harness vm ...``: build, inspect and try the VM hosts from the command line.

    python -m harness vm build [--rebuild] [--no-state]   image (+ saved guest state)
    python -m harness vm boot [--cold]                      one guest up and down, timed
    python -m harness vm box [--up]                         the Linux Vagrant box, added
                                                            (--up: booted once, timed)
    python -m harness vm accel                              kvm or tcg (exit 0 only for kvm)
    python -m harness vm info                               what is cached
    python -m harness vm clean [--stale-only]               leftovers (and the VM cache)

Every number printed is measured on this machine: build time and image size, the
accelerator and why, cold boot / provision / save / restore-to-SSH seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from harness import vmimage
from harness.proc import interrupt_on
from ztun.tools import guest_tool

if TYPE_CHECKING:
    from harness.hosts.qemu import QemuHost
    from harness.hosts.vagrant import VagrantBox, VagrantHost

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_NO_KVM = 3


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


def _build(args: argparse.Namespace) -> int:
    from harness.hosts.qemu import accelerator, ensure_state

    started = time.monotonic()
    image = vmimage.ensure_image(rebuild=args.rebuild)
    fresh = time.monotonic() - started > 1.0
    print(f"image     {image.directory}")
    print(
        f"          {'built' if fresh else 'cached'}; build time {image.build_seconds:.0f} s, "
        f"root file system {_mib(image.rootfs_bytes)} on disk, "
        f"kernel+initrd {_mib(image.kernel.stat().st_size + image.initrd.stat().st_size)}"
    )
    if args.no_state:
        return EXIT_OK
    accel = accelerator(image)
    print(f"accel     {accel}")
    state = ensure_state(image, accel, rebuild=args.rebuild)
    print(f"state     {state.directory}")
    print(
        f"          cold boot to SSH {state.boot_seconds:.1f} s, provision "
        f"{state.provision_seconds:.1f} s, save {state.save_seconds:.1f} s, "
        f"state file {_mib(state.vmstate_bytes)}"
    )
    return EXIT_OK


def _boot(args: argparse.Namespace) -> int:
    from harness.hosts.qemu import QemuHost

    with tempfile.TemporaryDirectory(prefix="vm-boot-") as tmp:
        started = time.monotonic()
        host = QemuHost.start("cli", Path(tmp), cold=args.cold)
        with _timed(host, host.accel, "start total", started):
            pass
    return EXIT_OK


@contextlib.contextmanager
def _timed(host: QemuHost | VagrantHost, accel: str, label: str, started: float) -> Iterator[None]:
    """Print how ``host`` came up (accelerator, its steps, ``label`` since ``started``, its
    kernel), run the block, then close it, timed too."""
    try:
        total = time.monotonic() - started
        print(f"accel     {accel}")
        for key, value in host.timings.items():
            print(f"{key:<15} {value:.2f} s")
        print(f"{label:<15} {total:.2f} s")
        print(host.run([guest_tool("uname"), "-sr"], check=True).stdout.strip())
        yield
    finally:
        started = time.monotonic()
        host.close()
        print(f"{'teardown':<15} {time.monotonic() - started:.2f} s")


def _box(args: argparse.Namespace) -> int:
    from harness.hosts.qemu import accelerator, ensure_state
    from harness.hosts.vagrant import VagrantBox, VagrantRunner, add_box, package_linux_box

    image = vmimage.ensure_image()
    state = ensure_state(image, accelerator(image))
    started = time.monotonic()
    path = package_linux_box(image, state, rebuild=args.rebuild)
    print(f"box       {path} ({_mib(path.stat().st_size)}, {time.monotonic() - started:.0f} s)")
    box = VagrantBox.linux(image, state)
    with tempfile.TemporaryDirectory(prefix="vagrant-cli-") as tmp:
        runner = VagrantRunner(box, Path(tmp), sandbox=None)
        add_box(runner)
        print(runner.call("box list", "box_list"))
        print("status   ", runner.call("status", "status"))
        if args.up:
            return _box_up(box, Path(tmp) / "logs")
    return EXIT_OK


def _box_up(box: VagrantBox, log_dir: Path) -> int:
    """`vagrant up` in the sandbox, timed, with the root namespace compared before/after."""
    from harness.hosts.vagrant import VagrantHost
    from harness.hygiene import RootSnapshot

    before = RootSnapshot.take()
    started = time.monotonic()
    host = VagrantHost.up(box, log_dir)
    with _timed(host, f"{box.env['ZTUN_VM_DRIVER']} (libvirt domain type)", "up total", started):
        during = RootSnapshot.take().added_since(before)
    after = RootSnapshot.take().added_since(before)
    print(f"root namespace: {len(during)} lines added while up, {len(after)} after")
    for line in [*during, *after]:
        print(f"  {line}")
    return EXIT_OK if not during and not after else EXIT_FAILED


def _accel(args: argparse.Namespace) -> int:
    """Exit 0 only where KVM really works: ``.ci/run`` gates the VM row on it."""
    from harness.hosts.qemu import accelerator

    logging.getLogger("harness.vm").setLevel(logging.INFO)
    accel = accelerator()
    print(accel)
    return EXIT_OK if accel == "kvm" else EXIT_NO_KVM


def _info(args: argparse.Namespace) -> int:
    root = vmimage.cache_root()
    print(f"cache     {root}  (recipe {vmimage.recipe_hash()[:16]})")
    for manifest in sorted(root.glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        print(
            f"image     {manifest.parent.name[:16]} built {data['built_at']} in "
            f"{data['build_seconds']} s, {_mib(data['rootfs_bytes'])}"
        )
        for meta in sorted(manifest.parent.glob("state-*/meta.json")):
            state = json.loads(meta.read_text())
            print(
                f"  state   {meta.parent.name}: boot {state['boot_seconds']} s, provision "
                f"{state['provision_seconds']} s, save {state['save_seconds']} s"
            )
    for verdict in sorted(root.glob("accel-*.json")):
        print(f"accel     {json.loads(verdict.read_text())}")
    return EXIT_OK


def _stale_workdirs() -> list[Path]:
    """Per-guest temp folders whose QEMU is gone (left by a run killed with SIGKILL)."""
    tmp = Path(tempfile.gettempdir())
    candidates = [*tmp.glob("ztun-qemu-*"), *tmp.glob("ztun-qmp-*"), *tmp.glob("ztun-vagrant-*")]
    cmdlines = []
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdlines.append(proc.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return [
        d
        for d in candidates
        if d.is_dir() and not any(str(d) in c for c in cmdlines) and not _sandbox_owner_alive(d)
    ]


def _sandbox_owner_alive(workdir: Path) -> bool:
    """A Vagrant work folder whose libvirt sandbox's owner still runs is not stale
    (between two vagrant commands no process names the folder, libvirtd included)."""
    from harness.hosts.vagrant import SANDBOX_OWNER_FILE
    from harness.owners import owner_alive

    try:
        owner = (workdir / SANDBOX_OWNER_FILE).read_text().strip()
    except OSError:
        return False
    return owner_alive(owner)


def _clean(args: argparse.Namespace) -> int:
    for stale in _stale_workdirs():
        shutil.rmtree(stale, ignore_errors=True)
        print(f"removed {stale}")
    if args.stale_only:
        return EXIT_OK
    root = vmimage.cache_root()
    if root.exists():
        # The base image is read-only on purpose; rmtree needs write on dirs only.
        shutil.rmtree(root)
    print(f"removed {root}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ztun-harness vm",  # also python -m harness vm: both run harness.cli
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the image and the saved guest state")
    build.add_argument("--rebuild", action="store_true", help="ignore the cache")
    build.add_argument("--no-state", action="store_true", help="image only, no boot")
    build.set_defaults(func=_build)
    boot = sub.add_parser("boot", help="restore (or --cold boot) one guest and time it")
    boot.add_argument("--cold", action="store_true", help="boot from scratch, no saved state")
    boot.set_defaults(func=_boot)
    box = sub.add_parser("box", help="package the Linux Vagrant box and vagrant box add it")
    box.add_argument("--rebuild", action="store_true")
    box.add_argument(
        "--up",
        action="store_true",
        help="then vagrant up once in the sandbox, time it, check the root namespace, destroy",
    )
    box.set_defaults(func=_box)
    sub.add_parser("accel", help="print kvm or tcg (exit 0 only for kvm)").set_defaults(func=_accel)
    sub.add_parser("info", help="show what is cached").set_defaults(func=_info)
    clean = sub.add_parser("clean", help="remove stale guest folders and the VM cache")
    clean.add_argument(
        "--stale-only", action="store_true", help="keep the cache, remove only leftovers"
    )
    clean.set_defaults(func=_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    # SIGTERM/SIGHUP unwind like Ctrl-C: a box's teardown (vagrant destroy, the libvirt
    # sandbox's namespace) runs in `finally` blocks that a plain termination would skip.
    interrupt_on(signal.SIGTERM, signal.SIGHUP)
    try:
        status: int = args.func(args)
    except (RuntimeError, OSError) as exc:
        print(f"vm {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        print(f"vm {args.command}: interrupted ({exc or 'SIGINT'}); torn down", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    sys.exit(main())
