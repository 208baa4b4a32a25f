"""Auto-route: plan (pure), journal (crash safety), and per-OS appliers.

Linux is applied over rtnetlink by :mod:`ztun.route.linux` (imported lazily by callers,
since it needs pyroute2 and root); macOS over a PF_ROUTE socket (:mod:`ztun.route.darwin`,
its resolver through scutil: :mod:`ztun.route.scutil`) and Windows through IP Helper
(:mod:`ztun.route.windows`), both planned by :mod:`ztun.route.system` and journaled by
:mod:`ztun.route.journaled`.
"""

from ztun.route.journal import (
    DEFAULT_RUN_DIR,
    Journal,
    JournalError,
    JournalState,
    default_journal_path,
)
from ztun.route.model import (
    TABLE_MAIN,
    PolicyRule,
    RouteChange,
    TableRoute,
    change_from_json,
)
from ztun.route.plan import (
    DEFAULT_FWMARK,
    DEFAULT_PRIORITY,
    DEFAULT_TABLE,
    AutoRouteConfig,
    RoutePlanError,
    plan_auto_route,
)

__all__ = [
    "DEFAULT_FWMARK",
    "DEFAULT_PRIORITY",
    "DEFAULT_RUN_DIR",
    "DEFAULT_TABLE",
    "TABLE_MAIN",
    "AutoRouteConfig",
    "Journal",
    "JournalError",
    "JournalState",
    "PolicyRule",
    "RouteChange",
    "RoutePlanError",
    "TableRoute",
    "change_from_json",
    "default_journal_path",
    "plan_auto_route",
]
