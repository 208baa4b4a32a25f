"""VagrantHost: a Vagrant box behind the Host protocol, driven through python-vagrant.

Linux box.  Packaged locally from the step-1 image (``vms/image``) for the libvirt
provider.  vagrant-libvirt wants a libvirt NAT network (bridge, dnsmasq, iptables): that
must never touch the root namespace, so a private libvirtd runs inside a network
namespace *and* a mount namespace of our own (:class:`LibvirtSandbox`): its bridge,
dnsmasq, iptables rules, sockets, state and domain definitions live and die there.
``vagrant`` itself runs inside the same namespaces (``nsenter``), and the harness reaches
the box's sshd through a socket created in that network namespace.

Windows and macOS boxes are standard public boxes (``vms/vagrant/{windows,macos}``); when
their provider or box is missing here, :func:`box_unavailable_reason` says which and how
to get it, and tests skip with that reason.

python-vagrant puts no timeout on anything: every call here goes through a ``vagrant``
shim that runs the real binary under coreutils ``timeout`` inside the sandbox.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko
import vagrant

from harness import vmimage
from harness.hosts.netns import NetnsHost, list_netns
from harness.hosts.ssh import SshError, SshHost, _load_key
from harness.owners import NAME_PREFIX, release_owner
from ztun.tools import install_hint, missing, tool

if TYPE_CHECKING:
    from harness.hosts.qemu import SavedState

log = logging.getLogger("harness.vm")

VAGRANT_DIR = vmimage.RECIPE_DIR.parent / "vagrant"
LINUX_BOX = "ztun/debian12"
BOX_FILE = "ztun-debian12-libvirt.box"
LINUX_TOOLS = ("vagrant", "libvirtd", "virsh")
WINDOWS_TOOLS = ("vagrant", "VBoxManage")
MACOS_TOOLS = ("vagrant", "prlctl")
#: The public boxes' providers here (the Windows box also runs under Hyper-V, on Windows).
PUBLIC_PROVIDERS = {"windows": ("virtualbox", WINDOWS_TOOLS), "macos": ("parallels", MACOS_TOOLS)}
PROVIDER = "libvirt"
#: `vagrant up` of a TCG guest: box upload + boot; generous but bounded.
UP_TIMEOUT = 900.0
COMMAND_TIMEOUT = 300.0
LIBVIRTD_READY_TIMEOUT = 30.0
SSH_TIMEOUT = 120.0
#: Where libvirt keeps run-time state: each becomes a private tmpfs in the sandbox.
#: (/etc/libvirt and /var/lib/libvirt are bind mounts of the sandbox's own copies.)
_LIBVIRT_PRIVATE_DIRS = ("/run/libvirt", "/var/log/libvirt", "/var/cache/libvirt")
#: qemu.conf of the sandboxed libvirtd: root-owned cache files stay readable (the
#: image, kernel and key live in root's cache), no AppArmor/SELinux labelling, and
#: no virtlogd (QEMU logs go to a plain file).
_QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
"""


#: The account libvirt's QEMU driver looks up at start-up (see ``_account_files``).
_QEMU_ACCOUNT = "libvirt-qemu"
_QEMU_ACCOUNT_PASSWD = f"{_QEMU_ACCOUNT}:x:64055:64055:Libvirt Qemu:/nonexistent:/usr/sbin/nologin"
_QEMU_ACCOUNT_GROUP = f"{_QEMU_ACCOUNT}:x:64055:"


class VagrantError(RuntimeError):
    """A Vagrant step failed; the message names the step and quotes its output."""


def _vagrant_home() -> Path:
    return vmimage.cache_root() / "vagrant.d"


# --------------------------------------------------------------------------- boxes


@dataclasses.dataclass(frozen=True, slots=True)
class VagrantBox:
    """One Vagrantfile of ``vms/vagrant/`` and what it needs to come up."""

    os_name: str
    directory: Path
    box: str
    provider: str
    env: dict[str, str]
    #: The programs it needs on this host (ztun.tools names): vagrant and the provider's.
    tools: tuple[str, ...] = ()
    #: The box file to ``vagrant box add`` (local boxes only).
    box_file: Path | None = None

    @classmethod
    def linux(cls, image: vmimage.GuestImage, state: SavedState) -> VagrantBox:
        """The Linux box: the QEMU guests' provisioned disk, for vagrant-libvirt.

        It boots the image's kernel directly, with KVM only where the QEMU backend's
        trial boot proved it works (``state.accel``), else TCG (libvirt's "qemu").
        """
        accel = os.environ.get("ZTUN_VAGRANT_DRIVER") or ("kvm" if state.accel == "kvm" else "qemu")
        return cls(
            os_name="linux",
            directory=VAGRANT_DIR / "linux",
            box=LINUX_BOX,
            provider=PROVIDER,
            env={
                "ZTUN_VM_KERNEL": str(image.kernel),
                "ZTUN_VM_INITRD": str(image.initrd),
                "ZTUN_VM_CMDLINE": image.cmdline,
                "ZTUN_VM_KEY": str(image.private_key),
                "ZTUN_VM_DRIVER": accel,
                "ZTUN_REPO": str(vmimage.REPO_ROOT),
            },
            tools=LINUX_TOOLS,
            box_file=state.directory / BOX_FILE,
        )

    @classmethod
    def public(cls, os_name: str) -> VagrantBox:
        """The Windows or macOS box (a public box named in its Vagrantfile)."""
        directory = VAGRANT_DIR / os_name
        box = _box_from_vagrantfile(directory / "Vagrantfile")
        provider, tools = PUBLIC_PROVIDERS[os_name]
        return cls(
            os_name=os_name,
            directory=directory,
            box=box,
            provider=provider,
            env={"ZTUN_REPO": str(vmimage.REPO_ROOT)},
            tools=tools,
        )


def _box_from_vagrantfile(path: Path) -> str:
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("config.vm.box ="):
            return stripped.split("=", 1)[1].strip().strip("\"'")
    raise VagrantError(f"no config.vm.box in {path}")


def package_linux_box(
    image: vmimage.GuestImage, state: SavedState, *, rebuild: bool = False
) -> Path:
    """A libvirt ``.box`` (qcow2 + metadata.json + Vagrantfile) of the provisioned guest.

    The disk is the saved state's: the image plus the /opt/ztun venv its one cold boot
    installed from wheels built here (the box has no way out to pip install), flattened.
    The guest was synced and stopped before its state was saved, so the disk boots cold
    too; ``vagrant up`` then needs no provisioning at all (it cost 245 s under TCG).
    """
    target = state.directory / BOX_FILE
    with vmimage.locked(target.with_suffix(".lock")):
        if target.is_file() and not rebuild:
            return target
        with tempfile.TemporaryDirectory(prefix="box-", dir=state.directory) as tmp:
            work = Path(tmp)
            subprocess.run(
                [
                    tool("qemu-img"),
                    "convert",
                    "-O",
                    "qcow2",
                    str(state.disk),
                    str(work / "box.img"),
                ],
                check=True,
                timeout=600,
                capture_output=True,
            )
            size_gib = -(-image.rootfs.stat().st_size // (1 << 30))
            (work / "metadata.json").write_text(
                json.dumps({"provider": PROVIDER, "format": "qcow2", "virtual_size": size_gib})
            )
            # The box carries no bootloader: the project Vagrantfile boots the kernel.
            (work / "Vagrantfile").write_text(
                'Vagrant.configure("2") do |config|\n'
                "  config.vm.provider :libvirt do |libvirt|\n"
                '    libvirt.disk_bus = "virtio"\n'
                "  end\n"
                "end\n"
            )
            partial = target.with_suffix(".partial")
            # Uncompressed: the box never leaves this machine's cache, and gzip would cost
            # CPU twice (here and in `vagrant box add`) on cores a TCG guest needs.
            with tarfile.open(partial, "w") as tar:
                for name in ("metadata.json", "Vagrantfile", "box.img"):
                    tar.add(work / name, arcname=name)
            partial.rename(target)
        return target


def box_unavailable_reason(box: VagrantBox) -> str | None:
    """Why ``box`` cannot come up here (None if it can): names what is missing and how.

    A missing program reads as :func:`harness.skips.require_tool` words it; tests call
    that first, so a program dev.sh's profile should have installed fails instead.
    """
    absent = missing(box.tools)
    if absent:
        return "tool missing: " + ", ".join(f"{t.name} ({install_hint([t])})" for t in absent)
    if box.provider == PROVIDER:
        plugins = subprocess.run(
            [tool("vagrant"), "plugin", "list"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        ).stdout
        if "vagrant-libvirt" not in plugins:
            return "vagrant plugin missing: vagrant-libvirt (apt-get install -y vagrant-libvirt)"
        if os.geteuid() != 0:
            return "Vagrant/libvirt sandbox needs root (network + mount namespaces)"
    return None


# --------------------------------------------------------------------------- sandbox

#: The file in a sandbox's work folder that names its owner prefix.
SANDBOX_OWNER_FILE = "owner"


def sandbox_owner_prefix() -> str:
    """This process's owner prefix for libvirt sandboxes (harness.owners)."""
    return f"{NAME_PREFIX}vagrant{os.getpid()}-"


class LibvirtSandbox:
    """A libvirtd of our own inside fresh network + mount namespaces.

    Everything libvirt creates for vagrant-libvirt (the NAT bridge, dnsmasq, iptables
    rules, domain and network XML, sockets) lives in namespaces that :meth:`close`
    removes; the root namespace never sees any of it.

    The network namespace is named under the owner prefix ``ztvagrant<pid>-`` (see
    harness.owners): when this process dies without :meth:`close` (SIGKILL), the next
    test session or ``python -m harness cleanup`` kills what still runs in it (libvirtd,
    QEMU, dnsmasq) and removes it, and ``python -m harness vm clean --stale-only`` the
    work folder, which names its owner in ``owner``.
    """

    _count = itertools.count()

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.owner = sandbox_owner_prefix()
        self.name = f"{self.owner}{next(self._count)}"
        (workdir / SANDBOX_OWNER_FILE).write_text(self.owner)
        self.netns = NetnsHost(self.name, log_dir=workdir / "logs", forwarding=True)
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self._start_libvirtd()
        except BaseException:
            self.close()
            raise

    def _start_libvirtd(self) -> None:
        # libvirt writes pool, network and domain definitions under /etc/libvirt: give it
        # a copy of its configuration, so nothing it defines outlives the sandbox.
        etc = self.workdir / "etc-libvirt"
        shutil.copytree("/etc/libvirt", etc, symlinks=True)
        (etc / "qemu.conf").write_text(_QEMU_CONF)
        varlib = self.workdir / "var-lib-libvirt"
        varlib.mkdir(exist_ok=True)
        mount, mkdir = tool("mount"), tool("mkdir")
        mounts = [f"{mount} -t tmpfs tmpfs {d}" for d in _LIBVIRT_PRIVATE_DIRS]
        mounts += [
            f"{mount} --bind {etc} /etc/libvirt",
            f"{mount} --bind {varlib} /var/lib/libvirt",
            *(f"{mount} --bind {copy} /etc/{name}" for name, copy in self._account_files().items()),
        ]
        script = " && ".join(
            [
                *(f"{mkdir} -p {d}" for d in (*_LIBVIRT_PRIVATE_DIRS, "/var/lib/libvirt")),
                *mounts,
                # Its pid file defaults to /run/libvirtd.pid, shared with every other
                # sandbox (and locked): a second sandbox's libvirtd would refuse to start.
                f"exec {tool('libvirtd')} --pid-file /run/libvirt/libvirtd.pid",
            ]
        )
        log_file = (self.workdir / "libvirtd.log").open("wb")
        # ip netns exec and unshare both exec, and sh execs libvirtd: Popen.pid is
        # libvirtd, whose namespaces nsenter joins for every vagrant command.
        self.process = subprocess.Popen(
            [
                tool("ip"),
                "netns",
                "exec",
                self.name,
                tool("unshare"),
                "--mount",
                "--propagation",
                "private",
                tool("sh"),
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        log_file.close()
        deadline = time.monotonic() + LIBVIRTD_READY_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                raise VagrantError(
                    "libvirtd exited in the sandbox: "
                    + (self.workdir / "libvirtd.log").read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise VagrantError(f"libvirtd did not answer within {LIBVIRTD_READY_TIMEOUT} s")
            time.sleep(0.2)  # noqa: sleep-ok - libvirtd's socket has no readiness event

    def _account_files(self) -> dict[str, Path]:
        """Copies of /etc/passwd and /etc/group that know libvirt's QEMU account.

        The QEMU driver resolves its compiled-in account (Debian: ``libvirt-qemu``)
        before it reads ``qemu.conf`` (which runs QEMU as root here), and fails to start
        when that account is missing.  Only libvirt-daemon-system's postinst creates it,
        and that package would also enable a system libvirtd: the account exists in the
        sandbox's mount namespace alone.
        """
        files = {}
        for name, line in (("passwd", _QEMU_ACCOUNT_PASSWD), ("group", _QEMU_ACCOUNT_GROUP)):
            text = Path("/etc", name).read_text()
            if not any(row.startswith(f"{_QEMU_ACCOUNT}:") for row in text.splitlines()):
                text = text.rstrip("\n") + "\n" + line + "\n"
            files[name] = self.workdir / f"etc-{name}"
            files[name].write_text(text)
        return files

    def _answers(self) -> bool:
        done = subprocess.run(
            self.enter([tool("virsh"), "-c", "qemu:///system", "version"]),
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return done.returncode == 0

    def enter(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the sandbox's network and mount namespaces."""
        assert self.process is not None
        return [tool("nsenter"), "--target", str(self.process.pid), "--mount", "--net", *argv]

    def close(self) -> None:
        """Stop the domains and libvirtd, then remove the namespace -- whatever the first
        steps raise (an interrupt included): the namespace never outlives this call."""
        try:
            self._stop_libvirtd()
        finally:
            # NetnsHost.close kills whatever still runs in the namespace and removes it.
            self.netns.close()
            if not list_netns(self.owner):
                release_owner(self.owner)

    def _stop_libvirtd(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Domains first (their QEMUs are children of libvirtd's world), then libvirtd.
        with contextlib.suppress(Exception):
            listing = subprocess.run(
                self.enter([tool("virsh"), "-c", "qemu:///system", "list", "--name"]),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            ).stdout.split()
            for domain in listing:
                subprocess.run(
                    self.enter([tool("virsh"), "-c", "qemu:///system", "destroy", domain]),
                    capture_output=True,
                    timeout=COMMAND_TIMEOUT,
                    check=False,
                )
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# --------------------------------------------------------------------------- vagrant


class VagrantRunner:
    """python-vagrant bound to one Vagrantfile, with timeouts and the sandbox applied."""

    def __init__(self, box: VagrantBox, workdir: Path, sandbox: LibvirtSandbox | None) -> None:
        self.box = box
        self.workdir = workdir
        self.sandbox = sandbox
        self.log_path = workdir / "vagrant.log"
        shim = workdir / "vagrant-shim"
        real = shutil.which(tool("vagrant")) or "/usr/bin/vagrant"
        # nsenter --mount resets the working directory: carry vagrant's own cwd over.
        inner = sandbox.enter(['--wd="$PWD"', real]) if sandbox is not None else [real]
        shim.write_text(
            "#!/bin/sh\n# python-vagrant has no timeouts: this shim adds one (and the sandbox).\n"
            f'exec timeout -k 10 "${{ZTUN_VAGRANT_TIMEOUT:-{COMMAND_TIMEOUT:g}}}" '
            + " ".join(inner)
            + ' "$@"\n'
        )
        shim.chmod(0o755)
        env = dict(
            os.environ,
            VAGRANT_HOME=str(_vagrant_home()),
            VAGRANT_DOTFILE_PATH=str(workdir / "dot-vagrant"),
            VAGRANT_CHECKPOINT_DISABLE="1",
            # The serial console of a libvirt box: kept with the test's logs.
            ZTUN_VM_CONSOLE=str(workdir / "console.log"),
            **box.env,
        )
        log_cm = vagrant.make_file_cm(str(self.log_path))  # type: ignore[no-untyped-call]
        self.vagrant = vagrant.Vagrant(  # type: ignore[no-untyped-call]
            root=str(box.directory), env=env, out_cm=log_cm, err_cm=log_cm
        )
        self.vagrant._vagrant_exe = str(shim)

    @contextlib.contextmanager
    def _timeout(self, seconds: float) -> Iterator[None]:
        env: dict[str, str] = self.vagrant.env
        env["ZTUN_VAGRANT_TIMEOUT"] = f"{seconds:g}"
        try:
            yield
        finally:
            env["ZTUN_VAGRANT_TIMEOUT"] = f"{COMMAND_TIMEOUT:g}"

    def call(
        self, step: str, method: str, *args: Any, timeout: float = COMMAND_TIMEOUT, **kwargs: Any
    ) -> Any:
        """Run one python-vagrant method; failures name the step and quote vagrant's log."""
        started = time.monotonic()
        try:
            with self._timeout(timeout):
                return getattr(self.vagrant, method)(*args, **kwargs)
        except subprocess.CalledProcessError as exc:
            why = "timed out" if exc.returncode in (124, 137) else f"exit {exc.returncode}"
            raise VagrantError(
                f"vagrant {step}: {why} after {time.monotonic() - started:.0f} s\n{self.log_tail()}"
            ) from exc

    def validate(self) -> None:
        """``vagrant validate`` with our env, shim and timeout.

        python-vagrant's own ``validate()`` runs a bare ``vagrant`` with neither the
        instance's environment nor its executable (so no timeout, no sandbox, and our
        Vagrantfiles' ``ENV.fetch`` fail): use its generic command runner instead.
        """
        self.call("validate", "_call_vagrant_command", ["validate"])

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no vagrant output)"


def add_box(runner: VagrantRunner) -> None:
    """``vagrant box add`` the local box (skipped when the same file is already added)."""
    box = runner.box
    assert box.box_file is not None
    stamp = _vagrant_home() / f"{box.box.replace('/', '-')}.added"
    marker = f"{box.box_file}:{box.box_file.stat().st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == marker:
        return
    runner.call(
        "box add",
        "box_add",
        box.box,
        str(box.box_file),
        provider=box.provider,
        force=True,
        timeout=UP_TIMEOUT,
    )
    stamp.write_text(marker)


class VagrantHost(SshHost):
    """A running Vagrant box (Host protocol over paramiko); :meth:`close` destroys it."""

    def __init__(
        self,
        name: str,
        client: paramiko.SSHClient,
        log_dir: Path,
        runner: VagrantRunner,
        ssh: dict[str, str],
    ) -> None:
        super().__init__(name, client, log_dir)
        self.runner = runner
        self.ssh_host = ssh["HostName"]
        self.ssh_port = int(ssh.get("Port", "22"))
        self.ssh_user = ssh.get("User", "root")
        self.ssh_key = Path(ssh.get("IdentityFile", "").strip('"'))
        #: Seconds per step of :meth:`up` (sandbox, box_add, up, ssh), as measured.
        self.timings: dict[str, float] = {}

    @property
    def sandbox(self) -> LibvirtSandbox | None:
        return self.runner.sandbox

    @classmethod
    def up(cls, box: VagrantBox, log_dir: Path) -> VagrantHost:
        """Sandbox, box add, ``vagrant up``, then one SSH connection through the sandbox."""
        workdir = Path(tempfile.mkdtemp(prefix=f"ztun-vagrant-{box.os_name}-"))
        timings: dict[str, float] = {}
        step = _Stopwatch(timings)
        sandbox: LibvirtSandbox | None = None
        runner: VagrantRunner | None = None
        try:
            with step("sandbox"):
                sandbox = LibvirtSandbox(workdir) if box.provider == PROVIDER else None
            runner = VagrantRunner(box, workdir, sandbox)
            if box.box_file is not None:
                with step("box_add"):
                    add_box(runner)
            with step("up"):
                runner.call("up", "up", provider=box.provider, timeout=UP_TIMEOUT)
            with step("ssh"):
                ssh = runner.call("ssh-config", "conf")
                client = _connect_via(sandbox, ssh)
            host = cls(f"vagrant-{box.os_name}", client, log_dir, runner, ssh)
        except BaseException:
            _teardown(runner, sandbox, workdir, log_dir)
            raise
        host.timings = timings
        log.info("vagrant box %s up: %s", box.box, _format_timings(timings))
        return host

    def _shutdown(self) -> None:
        _teardown(self.runner, self.runner.sandbox, self.runner.workdir, self.log_dir)


def _connect_via(sandbox: LibvirtSandbox | None, ssh: dict[str, str]) -> paramiko.SSHClient:
    """SSH to the box; with a sandbox, over a TCP socket created inside its namespace."""
    host, port = ssh["HostName"], int(ssh.get("Port", "22"))
    key = _load_key(Path(ssh["IdentityFile"].strip('"')))
    deadline = time.monotonic() + SSH_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            sock = sandbox.netns.socket() if sandbox is not None else None
            if sock is not None:
                sock.settimeout(10)
                sock.connect((host, port))
            client.connect(
                host,
                port=port,
                username=ssh.get("User", "root"),
                pkey=key,
                sock=sock,
                timeout=10,
                banner_timeout=10,
                auth_timeout=10,
                allow_agent=False,
                look_for_keys=False,
            )
            return client
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            last = exc
            time.sleep(1.0)  # noqa: sleep-ok - back-off between refused attempts
    raise SshError(f"no SSH answer from the box at {host}:{port}: {last!r}")


class _Stopwatch:
    """``with step("name"):`` records the seconds the block took in ``timings``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = time.monotonic() - started


def _format_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())


def _teardown(
    runner: VagrantRunner | None, sandbox: LibvirtSandbox | None, workdir: Path, log_dir: Path
) -> None:
    """Destroy the box, stop the sandbox, keep vagrant's log with the test's logs."""
    try:
        if runner is not None:
            with contextlib.suppress(Exception):
                runner.call("destroy", "destroy", timeout=COMMAND_TIMEOUT)
    finally:
        if sandbox is not None:
            sandbox.close()
        log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("vagrant.log", "libvirtd.log", "console.log"):
            with contextlib.suppress(OSError):
                shutil.copyfile(workdir / name, log_dir / name)
        shutil.rmtree(workdir, ignore_errors=True)
