"""Routing rules (to a proxy, a group, direct or reject), the proxies and groups, and the
``Config`` model shared by ``--config FILE`` and the CLI flags."""

from ztun.rules.config import (
    Config,
    DnsOptions,
    RouteOptions,
    SniffOptions,
    load_config,
    parse_toml,
)
from ztun.rules.errors import COMMAND_LINE, ConfigError, format_key, locate
from ztun.rules.proxies import DEFAULT_GROUP, GroupSpec, Policy, ProxySpec
from ztun.rules.rules import Action, Flow, Rule, RuleSet

__all__ = [
    "COMMAND_LINE",
    "DEFAULT_GROUP",
    "Action",
    "Config",
    "ConfigError",
    "DnsOptions",
    "Flow",
    "GroupSpec",
    "Policy",
    "ProxySpec",
    "RouteOptions",
    "Rule",
    "RuleSet",
    "SniffOptions",
    "format_key",
    "load_config",
    "locate",
    "parse_toml",
]
