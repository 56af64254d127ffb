"""ping and the ``repo`` commands."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from loadmgrd import __version__
from loadmgrd.errors import AlreadyExists, InvalidInput
from loadmgrd.protocol import NoParams, Params
from loadmgrd.rpc import Context, method


@method("ping", admin=False, params=NoParams)
async def ping(ctx: Context, params: NoParams) -> dict[str, Any]:
    """Daemon version, repository schema version, and what the caller may do."""
    info = await ctx.repo.info()
    started = getattr(ctx.services, "started_monotonic", time.monotonic())
    return {
        "version": __version__,
        "schema_version": info["schema_version"],
        "maintenance_mode": info["maintenance_mode"],
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - started, 3),
        "database": info["database"],
        "runs": ctx.services.engine.counts() if ctx.services.engine else {},
        "peer": {"uid": ctx.peer.uid, "user": ctx.peer.user, "admin": ctx.services.policy.is_admin(ctx.peer)},
    }


@method("repo.info", admin=False, params=NoParams)
async def repo_info(ctx: Context, params: NoParams) -> dict[str, Any]:
    """Repository file, schema version and maintenance mode."""
    return await ctx.repo.info()


@method("repo.create", admin=True, params=NoParams)
async def repo_create(ctx: Context, params: NoParams) -> dict[str, Any]:
    """Create the repository or bring its schema up to date; running it again changes nothing."""
    applied = await ctx.repo.migrate()
    info = await ctx.repo.info()
    return {**info, "migrations_applied": [f"{m.version:04d}_{m.name}" for m in applied]}


class MaintenanceParams(Params):
    enabled: bool | None = None


@method("repo.maintenance", admin=True, params=MaintenanceParams)
async def repo_maintenance(ctx: Context, params: MaintenanceParams) -> dict[str, Any]:
    """Turn maintenance mode on or off (toggle when ``enabled`` is omitted); no run may start while on."""
    info = await ctx.repo.info()
    enabled = (not info["maintenance_mode"]) if params.enabled is None else params.enabled
    await ctx.repo.set_maintenance(enabled)
    return {"maintenance_mode": enabled}


class BackupParams(Params):
    path: str = Field(min_length=1)
    force: bool = False


@method("repo.backup", admin=True, params=BackupParams)
async def repo_backup(ctx: Context, params: BackupParams) -> dict[str, Any]:
    """An online, consistent copy of the repository at ``path`` (an absolute path on the daemon's host)."""
    target = Path(params.path)
    if not target.is_absolute():
        raise InvalidInput(f"backup path {params.path!r} must be absolute (it is written by the daemon)")
    if target.resolve() == ctx.repo.path.resolve():
        raise InvalidInput("the backup path is the repository itself")
    if not target.parent.is_dir():
        raise InvalidInput(f"directory {target.parent} does not exist")
    if target.exists() and not params.force:
        raise AlreadyExists(f"{target} exists; use --force to replace it")
    try:
        return await ctx.repo.backup(target)
    except OSError as exc:
        raise InvalidInput(f"cannot write {target}: {exc.strerror}") from None


@method("repo.check", admin=False, params=NoParams)
async def repo_check(ctx: Context, params: NoParams) -> dict[str, Any]:
    """``PRAGMA integrity_check`` and ``foreign_key_check`` on the repository."""
    return await ctx.repo.integrity_check()
