"""Processes: add (create or update), update, remove, rename, view."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from loadmgrd.protocol import Line, Name, Params
from loadmgrd.rpc import Context, method
from loadmgrd.states import ProcessType, RowCountType

OffsetDays = Annotated[int, Field(ge=-36600, le=36600, description="days")]


class SettingsParams(Params):
    name: Name
    process_type: ProcessType | None = None
    subject_area: Line | None = None
    row_count_type: RowCountType | None = None
    row_count_property: Line | None = None
    currency_date_flag: bool | None = None
    currency_start_offset: OffsetDays | None = None
    currency_end_offset: OffsetDays | None = None

    def settings(self) -> dict[str, Any]:
        """Only the settings the caller gave."""
        given = self.model_fields_set - {"name"}
        out: dict[str, Any] = {}
        for key in sorted(given):
            value = getattr(self, key)
            if value is None and key in (
                "process_type",
                "row_count_type",
                "currency_date_flag",
                "currency_start_offset",
                "currency_end_offset",
            ):
                continue
            out[key] = value.value if isinstance(value, ProcessType | RowCountType) else value
        return out


@method("process.add", admin=True, params=SettingsParams)
async def process_add(ctx: Context, params: SettingsParams) -> dict[str, Any]:
    """Add a process; on an existing one, update the given settings and say so."""
    outcome = await ctx.repo.upsert_process(params.name, params.settings(), update_only=False)
    return {"process": params.name, "outcome": outcome}


@method("process.update", admin=True, params=SettingsParams)
async def process_update(ctx: Context, params: SettingsParams) -> dict[str, Any]:
    """Change only the given settings of an existing process."""
    outcome = await ctx.repo.upsert_process(params.name, params.settings(), update_only=True)
    return {"process": params.name, "outcome": outcome}


class NameParams(Params):
    name: Name


@method("process.remove", admin=True, params=NameParams)
async def process_remove(ctx: Context, params: NameParams) -> dict[str, Any]:
    """Remove a process with its log; refused while it is linked to tables."""
    await ctx.repo.remove_process(params.name)
    return {"process": params.name, "removed": True}


class RenameParams(Params):
    old: Name
    new: Name


@method("process.rename", admin=True, params=RenameParams)
async def process_rename(ctx: Context, params: RenameParams) -> dict[str, Any]:
    """Rename a process."""
    await ctx.repo.rename_process(params.old, params.new)
    return {"process": params.new, "old": params.old}


@method("process.view", admin=False, params=NameParams)
async def process_view(ctx: Context, params: NameParams) -> dict[str, Any]:
    """A process's settings, latest load window, status, batch and linked tables."""
    return await ctx.repo.process_details(params.name)
