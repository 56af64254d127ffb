"""Schedules: add, remove, enable, disable, list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loadmgrd import cron
from loadmgrd.protocol import Name, NoParams, Params
from loadmgrd.rpc import Context, method
from loadmgrd.timefmt import from_ts, to_ts


def _changed(ctx: Context) -> None:
    scheduler = getattr(ctx.services, "scheduler", None)
    if scheduler is not None:
        scheduler.changed()


class AddParams(Params):
    name: Name
    cron: str
    timezone: str | None = None


@method("schedule.add", admin=True, params=AddParams)
async def schedule_add(ctx: Context, params: AddParams) -> dict[str, Any]:
    """Start a job or job group on a cron schedule (5 fields, or 6 with seconds first)."""
    expression = cron.validate(params.cron)
    cron.zone(params.timezone)
    await ctx.services.engine.targets(params.name)  # a job or a group that exists
    await ctx.repo.add_schedule(params.name, expression, params.timezone)
    _changed(ctx)
    first = cron.next_fire(expression, params.timezone, datetime.now(UTC))
    return {"name": params.name, "cron": expression, "timezone": params.timezone, "next_fire_ts": to_ts(first)}


class RemoveParams(Params):
    name: Name
    cron: str | None = None


@method("schedule.remove", admin=True, params=RemoveParams)
async def schedule_remove(ctx: Context, params: RemoveParams) -> dict[str, Any]:
    """Remove a schedule of NAME (the given cron, or all of them)."""
    expression = cron.validate(params.cron) if params.cron else None
    removed = await ctx.repo.remove_schedules(params.name, expression)
    _changed(ctx)
    return {"name": params.name, "removed": removed}


class NameParams(Params):
    name: Name


@method("schedule.enable", admin=True, params=NameParams)
async def schedule_enable(ctx: Context, params: NameParams) -> dict[str, Any]:
    """Enable the schedules of NAME."""
    count = await ctx.repo.set_schedules_enabled(params.name, True)
    _changed(ctx)
    return {"name": params.name, "enabled": True, "schedules": count}


@method("schedule.disable", admin=True, params=NameParams)
async def schedule_disable(ctx: Context, params: NameParams) -> dict[str, Any]:
    """Disable the schedules of NAME (they stay, and fire again once enabled)."""
    count = await ctx.repo.set_schedules_enabled(params.name, False)
    _changed(ctx)
    return {"name": params.name, "enabled": False, "schedules": count}


@method("schedule.list", admin=False, params=NoParams)
async def schedule_list(ctx: Context, params: NoParams) -> dict[str, Any]:
    """Every schedule with its next fire time."""
    now = datetime.now(UTC)
    rows = await ctx.repo.list_schedules()
    for row in rows:
        after = max(now, from_ts(row["last_fire_ts"])) if row["last_fire_ts"] else now
        row["next_fire_ts"] = to_ts(cron.next_fire(row["cron"], row["timezone"], after)) if row["enabled"] else None
    return {"schedules": rows}
