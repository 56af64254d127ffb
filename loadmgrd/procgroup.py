"""Process groups of steps: identify them across a daemon restart, and end them (TERM, then KILL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable

POLL = 0.05


def members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the group, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def alive(pgid: int) -> bool:
    """Does any process of the group still run? (A zombie does not count.)"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return bool(members(pgid)) if os.path.isdir("/proc/self") else True


def is_same_group(pgid: int, run_id: str) -> bool:
    """Is ``pgid`` still a group a step of run ``run_id`` started? Step processes carry
    ``LOADMGR_RUN_ID`` in their environment; a reused number would not."""
    marker = f"LOADMGR_RUN_ID={run_id}".encode()
    for pid in members(pgid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if marker in environ.read().split(b"\0"):
                    return True
        except OSError:
            continue
    return False


def groups_of_runs(run_ids: Iterable[str]) -> set[int]:
    """Process groups of any process whose environment says it belongs to one of ``run_ids``
    (``LOADMGR_RUN_ID``), found by scanning /proc: this also finds a step spawned just before a
    crash, before its process group could be recorded."""
    markers = {f"LOADMGR_RUN_ID={r}".encode() for r in run_ids}
    if not markers:
        return set()
    groups: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as environ:
                if not markers.intersection(environ.read().split(b"\0")):
                    continue
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            groups.add(int(fields[2]))
    return groups


def signal_groups(groups: Iterable[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


async def terminate(groups: Iterable[int], grace: float) -> None:
    """SIGTERM every group, wait up to ``grace`` seconds for them to go, then SIGKILL the rest."""
    remaining = {g for g in groups if alive(g)}
    signal_groups(remaining, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while remaining and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
        remaining = {g for g in remaining if alive(g)}
    signal_groups(remaining, signal.SIGKILL)
