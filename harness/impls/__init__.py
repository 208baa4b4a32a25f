"""Adapters for the tun2socks implementations the harness can certify.

An adapter (a :class:`Tun2Socks` subclass) is found by name in the entry-point group
``ztun_harness.tun2socks``, so a package of its own can add one without touching this
one -- the built-in ``ztun`` and ``sing-box`` adapters register the same way, in this
project's pyproject.toml::

    [project.entry-points."ztun_harness.tun2socks"]
    my-tun2socks = "my_package.adapter:MyTun2Socks"

``--tun2socks NAME`` picks one; an implementation with no Python adapter at all is given
as command templates instead (:mod:`harness.impls.command`, ``--tun2socks-command``).
An adapter is instantiated with its options (``SingBox(stack="gvisor")``) and started
with ``adapter.start(host, device=..., addresses=[...], proxy_url=..., mtu=...)``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import shlex
from dataclasses import dataclass

from harness.impls.base import (
    DEFAULT_ADDRESSES,
    DEFAULT_MTU,
    DEFAULT_ROUTES,
    ProxyEndpoint,
    RunningImpl,
    Tun2Socks,
    configure_device,
    normalise_addresses,
    route_into,
)
from harness.impls.command import PLACEHOLDERS, CommandSpec, CommandTemplate, TemplateError
from harness.impls.singbox import SingBox, bundled_binary, singbox_config
from harness.impls.ztun import Ztun

ENTRY_POINT_GROUP = "ztun_harness.tun2socks"


@functools.cache
def registry() -> dict[str, importlib.metadata.EntryPoint]:
    """Every adapter installed: entry point name -> entry point (loaded on use)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> tuple[str, ...]:
    """The values ``--tun2socks`` accepts, sorted."""
    return tuple(sorted(registry()))


def get_implementation(name: str) -> type[Tun2Socks]:
    """The adapter class registered as ``name``; the error lists the known ones."""
    entry = registry().get(name)
    if entry is None:
        known = ", ".join(names()) or f"none: no package declares {ENTRY_POINT_GROUP!r}"
        raise ValueError(f"unknown tun2socks implementation {name!r} (known: {known})")
    adapter = entry.load()
    if not (isinstance(adapter, type) and issubclass(adapter, Tun2Socks)):
        raise TypeError(f"entry point {name} = {entry.value} is not a Tun2Socks subclass")
    return adapter


DEFAULT_IMPLEMENTATION = "ztun"


@dataclass(frozen=True)
class AdapterChoice:
    """The implementation under test, as the ``--tun2socks*`` options chose it."""

    name: str
    """The report's column."""
    registered: str | None = None
    """The entry point's name, or None for a command-template adapter."""
    command: CommandSpec | None = None

    options: tuple[str, ...] = ()
    """The options that chose it, to print in a reproduce line."""

    def describe_options(self) -> str:
        return shlex.join(self.options)

    def build(self) -> Tun2Socks:
        """A fresh adapter instance (one per test: adapters may keep per-start state)."""
        if self.command is not None:
            return CommandTemplate(self.command)
        assert self.registered is not None
        adapter = get_implementation(self.registered)()
        adapter.name = self.name
        return adapter


def choose_adapter(
    tun2socks: str | None = None,
    *,
    command: str | None = None,
    config_template: str | None = None,
    ready: str | None = None,
    name: str | None = None,
    version_command: str | None = None,
    harness_configures_device: bool = False,
) -> AdapterChoice:
    """Validate the ``--tun2socks*`` options together; ValueError says what is wrong."""
    if command is None:
        given = {
            "--tun2socks-config-template": config_template,
            "--tun2socks-ready": ready,
            "--tun2socks-version-command": version_command,
            "--tun2socks-harness-configures-device": harness_configures_device or None,
        }
        stray = [option for option, value in given.items() if value is not None]
        if stray:
            raise ValueError(f"{', '.join(stray)} only apply with --tun2socks-command")
        registered = tun2socks or DEFAULT_IMPLEMENTATION
        if registered not in registry():
            get_implementation(registered)  # raises, listing the known names
        if name is not None:
            CommandSpec.parse("true", name=name)  # the same rule for every column name
        options = ("--tun2socks", registered, *(("--tun2socks-name", name) if name else ()))
        return AdapterChoice(name=name or registered, registered=registered, options=options)
    if tun2socks is not None:
        raise ValueError("give --tun2socks NAME or --tun2socks-command ARGV, not both")
    spec = CommandSpec.parse(
        command,
        config_template=config_template,
        ready=ready or "link",
        name=name,
        version_command=version_command,
        harness_configures_device=harness_configures_device,
    )
    chosen: dict[str, str | None] = {
        "--tun2socks-command": command,
        "--tun2socks-config-template": config_template,
        "--tun2socks-ready": ready,
        "--tun2socks-name": name,
        "--tun2socks-version-command": version_command,
    }
    words = [word for option, value in chosen.items() if value for word in (option, value)]
    if harness_configures_device:
        words.append("--tun2socks-harness-configures-device")
    return AdapterChoice(name=spec.display_name, command=spec, options=tuple(words))


__all__ = [
    "DEFAULT_ADDRESSES",
    "DEFAULT_IMPLEMENTATION",
    "DEFAULT_MTU",
    "DEFAULT_ROUTES",
    "ENTRY_POINT_GROUP",
    "PLACEHOLDERS",
    "AdapterChoice",
    "CommandSpec",
    "CommandTemplate",
    "ProxyEndpoint",
    "RunningImpl",
    "SingBox",
    "TemplateError",
    "Tun2Socks",
    "Ztun",
    "bundled_binary",
    "choose_adapter",
    "configure_device",
    "get_implementation",
    "names",
    "normalise_addresses",
    "registry",
    "route_into",
    "singbox_config",
]
