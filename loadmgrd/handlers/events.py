"""Job events: add, enable, disable, remove, rename, view."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loadmgrd.errors import InvalidInput
from loadmgrd.protocol import Line, Name, Params
from loadmgrd.rpc import Context, method
from loadmgrd.states import EventAction, EventType


class AddParams(Params):
    job: Name
    event: Name
    item: Line
    action: EventAction = EventAction.WAIT
    type: EventType = EventType.FILE


@method("event.add", admin=True, params=AddParams)
async def event_add(ctx: Context, params: AddParams) -> dict[str, Any]:
    """Add a wait or create event to a job."""
    if params.type is EventType.OTHER:
        raise InvalidInput("event type 'other' is reserved and not supported; use -t file with a path")
    if not params.item.strip():
        raise InvalidInput("the event item (a file path) must not be empty")
    await ctx.repo.add_event(params.job, params.event, params.action.value, params.type.value, params.item)
    return {"job": params.job, "event": params.event, "action": params.action.value, "type": params.type.value}


class EventsParams(Params):
    job: Name
    events: list[Name] = Field(min_length=1)


@method("event.enable", admin=True, params=EventsParams)
async def event_enable(ctx: Context, params: EventsParams) -> dict[str, Any]:
    """Enable events of a job (all named events must exist, or nothing changes)."""
    await ctx.repo.set_events_enabled(params.job, params.events, True)
    return {"job": params.job, "events": params.events, "enabled": True}


@method("event.disable", admin=True, params=EventsParams)
async def event_disable(ctx: Context, params: EventsParams) -> dict[str, Any]:
    """Disable events of a job; a disabled event is ignored by new runs."""
    await ctx.repo.set_events_enabled(params.job, params.events, False)
    return {"job": params.job, "events": params.events, "enabled": False}


@method("event.remove", admin=True, params=EventsParams)
async def event_remove(ctx: Context, params: EventsParams) -> dict[str, Any]:
    """Remove events of a job."""
    await ctx.repo.remove_events(params.job, params.events)
    return {"job": params.job, "events": params.events, "removed": True}


class RenameParams(Params):
    job: Name
    old: Name
    new: Name


@method("event.rename", admin=True, params=RenameParams)
async def event_rename(ctx: Context, params: RenameParams) -> dict[str, Any]:
    """Rename an event of a job."""
    await ctx.repo.rename_event(params.job, params.old, params.new)
    return {"job": params.job, "event": params.new, "old": params.old}


class ViewParams(Params):
    job: Name


@method("event.view", admin=False, params=ViewParams)
async def event_view(ctx: Context, params: ViewParams) -> dict[str, Any]:
    """Every event of a job."""
    job = await ctx.repo.get_job(params.job)
    return {"job": params.job, "events": await ctx.repo.list_events(job["job_key"])}
