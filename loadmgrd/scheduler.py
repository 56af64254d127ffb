"""The daemon's scheduler: starts jobs and groups when their cron schedules fire.

It sleeps until the earliest next fire (woken early when schedules change), never polls. A
job still running when its schedule fires is not started twice (the refusal is logged).
Fires missed while the daemon was down are not replayed in a burst: a schedule that missed
one or more fires gets one catch-up run at start-up, then follows its cron again. In
maintenance mode fires are skipped with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loadmgrd import cron
from loadmgrd.errors import LoadmgrError
from loadmgrd.timefmt import from_ts, to_ts

if TYPE_CHECKING:
    from loadmgrd.engine import Engine

log = logging.getLogger("loadmgrd.scheduler")

MAX_SLEEP = 60.0  # re-check at least this often, so a changed wall clock is noticed


class Scheduler:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._wake = asyncio.Event()
        self._fired: set[asyncio.Task[None]] = set()

    def changed(self) -> None:
        """Schedules were added, removed, enabled or disabled: recompute."""
        self._wake.set()

    async def run(self) -> None:
        await self._catch_up()
        while True:
            self._wake.clear()
            now = datetime.now(UTC)
            due: list[dict[str, Any]] = []
            earliest: datetime | None = None
            for schedule in await self._engine.repo.list_schedules():
                if not schedule["enabled"]:
                    continue
                after = _last(schedule)
                fire = cron.next_fire(schedule["cron"], schedule["timezone"], after)
                if fire <= now:
                    due.append({**schedule, "fire": fire})
                elif earliest is None or fire < earliest:
                    earliest = fire
            for schedule in due:
                fire = schedule["fire"]
                if cron.next_fire(schedule["cron"], schedule["timezone"], fire) <= now:
                    fire = now  # more than one fire late: fire once, do not replay the rest
                await self._fire(schedule, fire)
            if due:
                continue
            delay = MAX_SLEEP if earliest is None else min(MAX_SLEEP, (earliest - now).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(delay, 0.0))

    async def _catch_up(self) -> None:
        now = datetime.now(UTC)
        for schedule in await self._engine.repo.list_schedules():
            if not schedule["enabled"] or schedule["last_fire_ts"] is None:
                continue
            last = from_ts(schedule["last_fire_ts"])
            if cron.catch_up(schedule["cron"], schedule["timezone"], last, now):
                log.info(
                    "schedule %r of %s missed fires while loadmgrd was down: one catch-up run",
                    schedule["cron"],
                    schedule["target_name"],
                )
                await self._fire(schedule, now)

    async def _fire(self, schedule: dict[str, Any], fire: datetime) -> None:
        await self._engine.repo.schedule_fired(schedule["schedule_key"], to_ts(fire))
        name = schedule["target_name"]
        info = await self._engine.repo.info()
        if info["maintenance_mode"]:
            log.warning("schedule %r of %s skipped: maintenance mode is on", schedule["cron"], name)
            return
        from loadmgrd.engine import StartOptions

        try:
            result = await self._engine.start(name, StartOptions(requested_by=f"schedule {schedule['cron']}"))
        except LoadmgrError as exc:
            log.warning("schedule %r of %s: not started: %s", schedule["cron"], name, exc.message)
            return
        for item in result["results"]:
            if item["started"]:
                log.info("schedule %r started %s: run %s", schedule["cron"], item["job"], item["run_id"])
            else:
                log.warning("schedule %r: %s not started: %s", schedule["cron"], item["job"], item["message"])


def _last(schedule: dict[str, Any]) -> datetime:
    """Fires are computed after the last fire, or after the schedule was created."""
    return from_ts(schedule["last_fire_ts"] or schedule["created_ts"])
