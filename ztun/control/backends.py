"""The two backends: one engine (`LocalBackend`), and the parent of workers
(`WorkersBackend`), which asks every worker over its channel and merges the replies.

With `--workers N` each worker is a whole engine with its own flow table; the parent
answers for all of them: counters and histograms add up, flow lists are concatenated
and a flow's id becomes `w<k>-<n>` (worker k's flow n), which `close` routes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..flows import FlowFilter, FlowTable, merge_summaries
from ..metrics import render
from .client import Channel
from .handler import CommandFailed, FlowId
from .protocol import Request

TOP_FLOWS = 10


class LocalBackend:
    """Answers from one engine's flow table; `status_base` gives the rest of the reply
    (instance, accelerations, proxies, groups, counters), `reload` does a reload."""

    def __init__(
        self,
        table: FlowTable,
        *,
        clock: Callable[[], float],
        status_base: Callable[[], dict[str, Any]],
        reload: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.table = table
        self.clock = clock
        self.status_base = status_base
        self._reload = reload

    async def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            **self.status_base(),
            "flows": self.table.summary(),
            "top_flows": [r.as_dict(now) for r in self.table.top(TOP_FLOWS)],
        }

    async def flows(self, flow_filter: FlowFilter) -> list[dict[str, Any]]:
        now = self.clock()
        return [r.as_dict(now) for r in self.table.select(flow_filter)]

    async def close(self, flow_id: FlowId) -> None:
        if not isinstance(flow_id, int) or not self.table.close(flow_id):
            raise CommandFailed(f"no flow {flow_id}")

    async def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._reload(args)

    async def metrics(self) -> str:
        return render(await self.status())


def add_counters(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Sum `part` into `total`: numbers add, nested tables (the stack's) add per key."""
    for key, value in part.items():
        if isinstance(value, Mapping):
            add_counters(total.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def relabel(flows: Sequence[dict[str, Any]], worker: int) -> list[dict[str, Any]]:
    return [{**flow, "id": f"w{worker}-{flow['id']}"} for flow in flows]


def merge_proxies(statuses: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each worker checks its proxies on its own: a proxy is up if any worker sees it up,
    and then that worker's view (since, last_error, failures, rtt_ms) is the one shown;
    its open flows are the sum over workers."""
    merged: dict[str, dict[str, Any]] = {}
    for status in statuses:
        for proxy in status.get("proxies", ()):
            seen = merged.get(proxy["name"])
            if seen is None:
                merged[proxy["name"]] = dict(proxy)
                continue
            active = seen.get("active", 0) + proxy.get("active", 0)
            if proxy["up"] and not seen["up"]:
                seen.update(proxy)
            seen["active"] = active
    return list(merged.values())


def merge_groups(statuses: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each group as the first worker sees it, unless that worker has no member up and
    another has (the member such a worker's new flows go to)."""
    merged: dict[str, dict[str, Any]] = {}
    for status in statuses:
        for name, group in (status.get("groups") or {}).items():
            seen = merged.get(name)
            if seen is None or (seen.get("active") is None and group.get("active") is not None):
                merged[name] = dict(group)
    return merged


def merge_statuses(base: dict[str, Any], statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The parent's status: its own `base` (instance, accelerations) plus the workers'."""
    counters: dict[str, Any] = {}
    top: list[dict[str, Any]] = []
    for index, status in enumerate(statuses):
        add_counters(counters, status["counters"])
        top += relabel(status["top_flows"], index)
    top.sort(key=lambda f: -(f["bytes_up"] + f["bytes_down"]))
    first = statuses[0] if statuses else {}
    return {
        **first,
        **base,
        "proxies": merge_proxies(statuses),
        "groups": merge_groups(statuses),
        "counters": counters,
        "flows": merge_summaries(s["flows"] for s in statuses),
        "top_flows": top[:TOP_FLOWS],
    }


class WorkersBackend:
    """The parent of `--workers N`: every request goes to each worker's channel."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        status_base: Callable[[], dict[str, Any]],
        reload: Callable[[dict[str, Any]], Any],
    ) -> None:
        self.channels = list(channels)
        self.status_base = status_base
        self._reload = reload

    async def ask(self, channel: Channel, request: Request) -> Any:
        ok, value = await channel.call(request)
        if not ok:
            raise CommandFailed(value)
        return value

    async def ask_all(self, request: Request) -> list[Any]:
        return list(await asyncio.gather(*(self.ask(c, request) for c in self.channels)))

    async def status(self) -> dict[str, Any]:
        return merge_statuses(self.status_base(), await self.ask_all(Request("status")))

    async def flows(self, flow_filter: FlowFilter) -> list[dict[str, Any]]:
        args: dict[str, Any] = {}
        if flow_filter.proto:
            args["proto"] = flow_filter.proto
        if flow_filter.dst is not None:
            args["dst"] = str(flow_filter.dst)
        if flow_filter.domain:
            args["domain"] = flow_filter.domain
        replies = await self.ask_all(Request("flows", args))
        return [flow for k, flows in enumerate(replies) for flow in relabel(flows, k)]

    async def close(self, flow_id: FlowId) -> None:
        worker, _, number = str(flow_id).partition("-")
        index = int(worker[1:]) if worker[1:].isdigit() and number else -1
        if not 0 <= index < len(self.channels):
            raise CommandFailed(f"no flow {flow_id} (with workers, ids are w<k>-<n>)")
        try:
            await self.ask(self.channels[index], Request("close", {"id": int(number)}))
        except CommandFailed:
            raise CommandFailed(f"no flow {flow_id}") from None

    async def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        """The parent decides (reads, validates, plans); workers apply the same text."""
        outcome = self._reload(args)
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        result: dict[str, Any] = outcome
        return result

    async def metrics(self) -> str:
        return render(await self.status())
