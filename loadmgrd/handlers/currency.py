"""Data currency of tables, and process↔table links."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from loadmgrd.protocol import Line, Name, Params
from loadmgrd.rpc import Context, method

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _identifier(value: str) -> str:
    """Schema, table and column names go into SQL on the target, so only plain identifiers."""
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a plain SQL identifier (letters, digits, _ and $)")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]


class ConfigureParams(Params):
    schema_name: Identifier = Field(alias="schema")
    table: Identifier
    column: Identifier
    subject_area: Line | None = None
    currency_date_offset: bool = False
    currency_dttm_query: str | None = None


@method("currency.configure", admin=True, params=ConfigureParams)
async def currency_configure(ctx: Context, params: ConfigureParams) -> dict[str, Any]:
    """Configure (or reconfigure) the data currency of a table."""
    settings: dict[str, Any] = {
        "date_column": params.column,
        "currency_date_offset": params.currency_date_offset,
    }
    for key in ("subject_area", "currency_dttm_query"):
        if key in params.model_fields_set:
            settings[key] = getattr(params, key)
    outcome = await ctx.repo.configure_currency(params.schema_name, params.table, settings)
    return {"table": f"{params.schema_name}.{params.table}", "outcome": outcome}


class TableParams(Params):
    schema_name: Identifier = Field(alias="schema")
    table: Identifier


@method("currency.remove", admin=True, params=TableParams)
async def currency_remove(ctx: Context, params: TableParams) -> dict[str, Any]:
    """Remove a table's data currency with its log; refused while linked to processes."""
    await ctx.repo.remove_currency(params.schema_name, params.table)
    return {"table": f"{params.schema_name}.{params.table}", "removed": True}


class RenameParams(Params):
    old_schema: Identifier
    old_table: Identifier
    new_schema: Identifier
    new_table: Identifier


@method("currency.rename", admin=True, params=RenameParams)
async def currency_rename(ctx: Context, params: RenameParams) -> dict[str, Any]:
    """Move a data currency entry (and its log and links) to a new schema/table name."""
    await ctx.repo.rename_currency(params.old_schema, params.old_table, params.new_schema, params.new_table)
    return {"table": f"{params.new_schema}.{params.new_table}", "old": f"{params.old_schema}.{params.old_table}"}


@method("currency.view", admin=False, params=TableParams)
async def currency_view(ctx: Context, params: TableParams) -> dict[str, Any]:
    """A table's currency settings with its current currency date and datetime."""
    return await ctx.repo.currency_details(params.schema_name, params.table)


class LinkParams(Params):
    process: Name
    schema_name: Identifier = Field(alias="schema")
    table: Identifier


@method("link.create", admin=True, params=LinkParams)
async def link_create(ctx: Context, params: LinkParams) -> dict[str, Any]:
    """Link a process to a table's data currency."""
    await ctx.repo.create_link(params.process, params.schema_name, params.table)
    return {"process": params.process, "table": f"{params.schema_name}.{params.table}", "linked": True}


@method("link.remove", admin=True, params=LinkParams)
async def link_remove(ctx: Context, params: LinkParams) -> dict[str, Any]:
    """Remove a process↔table link."""
    await ctx.repo.remove_link(params.process, params.schema_name, params.table)
    return {"process": params.process, "table": f"{params.schema_name}.{params.table}", "linked": False}
