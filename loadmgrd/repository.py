"""The repository: every SQL statement of the project lives in this module.

One SQLite file in WAL mode, opened through aiosqlite with two connections: a writer, whose
transactions are serialised by an asyncio lock (``BEGIN IMMEDIATE`` … ``COMMIT``), and a reader
for queries, which sees the last committed state and never waits for the writer. A third,
plain connection commits a step's small writes on the event loop's thread when nothing is in
the way (``Repository._write_at_once``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from loadmgrd.errors import AlreadyExists, Conflict, NotFound, RepositoryError
from loadmgrd.jobfile import STEP_COLUMNS, StepDef
from loadmgrd.states import ACTIVE_RUN_STATUSES, RunStatus
from loadmgrd.timefmt import now_ts

Row = dict[str, Any]

_BOOL_FIELDS = ("job_step_ignore_error", "job_step_capture_output", "skip_step")
# A step's two writes (its start, its outcome) are committed on the event loop's own thread when
# nothing stands in the way (see Repository._write_at_once); that connection never checkpoints
# the WAL itself, the writer thread does it every this many of those commits.
CHECKPOINT_EVERY = 256


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The numbered ``migrations/NNNN_name.sql`` files shipped in the package, in order."""
    found = []
    for entry in resources.files("loadmgrd").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append(Migration(int(entry.name[:4]), entry.name[5:-4], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RepositoryError(f"migration numbering has a gap before {migration.version:04d}")
    return found


def _dict(row: sqlite3.Row | None) -> Row | None:
    return dict(row) if row is not None else None


def _step_from_row(row: Mapping[str, Any]) -> StepDef:
    values = {k: row[k] for k in STEP_COLUMNS}
    for name in _BOOL_FIELDS:
        values[name] = bool(values[name])
    return StepDef.from_mapping(values)


class Repository:
    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self.applied_at_open: list[Migration] = []
        self._direct: sqlite3.Connection | None = None  # see _write_at_once
        self._direct_commits = 0
        self._checkpoints: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float = 30.0) -> Repository:
        """Open (creating if needed) the repository file and bring its schema up to date."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot create the directory for {path}: {exc.strerror}") from None
        writer = await cls._connect(path, busy_timeout)
        try:
            reader = await cls._connect(path, busy_timeout)
        except BaseException:
            await writer.close()
            raise
        repo = cls(path, writer, reader)
        try:
            repo.applied_at_open = await repo.migrate()
            await repo._check_writable()
            repo._direct = cls._connect_direct(path)
        except BaseException:
            await repo.close()
            raise
        return repo

    @staticmethod
    def _connect_direct(path: Path) -> sqlite3.Connection:
        """The event loop thread's own connection for the per-step writes: it never waits for a
        lock (busy timeout 0: a busy database sends the write the usual way) and never
        checkpoints (a checkpoint syncs the file: the writer thread does those)."""
        try:
            conn = sqlite3.connect(str(path), timeout=0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise RepositoryError(f"cannot open repository {path}: {exc}") from None
        return conn

    async def _check_writable(self) -> None:
        """A real (no-op) write: an empty transaction succeeds even on a read-only file."""
        try:
            async with self._tx() as conn:
                await conn.execute("UPDATE repository_info SET schema_version = schema_version WHERE id = 1")
        except sqlite3.Error as exc:
            raise RepositoryError(f"repository {self.path} cannot be written: {exc}") from None

    @staticmethod
    async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
        """One connection with the pragmas; closed again (its thread ended) if they fail."""
        try:
            conn = await aiosqlite.connect(str(path), timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise RepositoryError(f"cannot open repository {path}: {exc}") from None
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            await conn.close()
            raise RepositoryError(f"cannot open repository {path}: {exc}") from None
        return conn

    async def close(self) -> None:
        for task in list(self._checkpoints):
            with contextlib.suppress(BaseException):
                await task
        if self._direct is not None:
            with contextlib.suppress(sqlite3.Error):
                self._direct.close()
            self._direct = None
        for conn in (self._reader, self._writer):
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.close()

    def _write_at_once(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> bool:
        """Commit a few small statements right here, on the event loop's thread, when that costs
        no waiting: no write of ours is under way (the write lock is free, and nothing awaits in
        between, so none can start) and SQLite takes the write lock at once. That saves the
        round trip to the writer thread (about 0.1 ms of a 1.5 ms step). Returns False, having
        written nothing, when the write must go the usual way (another process holds the lock).
        The commit is the same WAL commit as the writer thread's: as durable, at the same point."""
        conn = self._direct
        if conn is None or self._write_lock.locked():
            return False
        try:
            if len(statements) == 1:
                conn.execute(*statements[0])  # autocommit: one atomic statement (and its trigger)
            else:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in statements:
                        conn.execute(*statement)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        self._direct_commits += 1
        if self._direct_commits % CHECKPOINT_EVERY == 0:
            task = asyncio.ensure_future(self._checkpoint())
            self._checkpoints.add(task)
            task.add_done_callback(self._checkpoints.discard)
        return True

    async def _checkpoint(self) -> None:
        """Fold the WAL back into the database file, in the writer thread (PASSIVE: it never
        waits for readers)."""
        with contextlib.suppress(sqlite3.Error):
            async with self._write_lock:
                await self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; rolled back on any error, including cancellation."""
        async with self._write_lock:
            conn = self._writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            else:
                await asyncio.shield(conn.execute("COMMIT"))

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """Several reads that must see one committed state."""
        async with self._read_lock:
            conn = self._reader
            await conn.execute("BEGIN")
            try:
                yield conn
            finally:
                await conn.execute("COMMIT")

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._read_lock, self._reader.execute(sql, params) as cur:
            return _dict(await cur.fetchone())

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._read_lock, self._reader.execute(sql, params) as cur:
            return [dict(r) for r in await cur.fetchall()]

    # ------------------------------------------------------------------ schema

    async def migrate(self) -> list[Migration]:
        """Apply every migration newer than the recorded version, each in its own transaction."""
        async with self._write_lock:
            conn = self._writer
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migration ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ts TEXT NOT NULL)"
            )
            async with conn.execute("SELECT coalesce(max(version), 0) FROM schema_migration") as cur:
                row = await cur.fetchone()
            current = int(row[0]) if row else 0
            migrations = load_migrations()
            if current > len(migrations):
                raise RepositoryError(
                    f"{self.path} has schema version {current}, newer than this loadmgrd knows "
                    f"({len(migrations)}); upgrade loadmgr"
                )
            applied = []
            for migration in migrations[current:]:
                try:
                    await conn.execute("BEGIN IMMEDIATE")
                    for statement in _statements(migration.sql):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migration (version, name, applied_ts) VALUES (?, ?, ?)",
                        (migration.version, migration.name, now_ts()),
                    )
                    if migration.version == 1:
                        await conn.execute(
                            "INSERT INTO repository_info (id, schema_version, created_ts) VALUES (1, 1, ?)",
                            (now_ts(),),
                        )
                    else:
                        await conn.execute(
                            "UPDATE repository_info SET schema_version = ? WHERE id = 1", (migration.version,)
                        )
                    await conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    await conn.execute("ROLLBACK")
                    raise RepositoryError(f"migration {migration.version:04d}_{migration.name} failed: {exc}") from None
                applied.append(migration)
            return applied

    async def info(self) -> Row:
        row = await self._one(
            "SELECT schema_version, maintenance_mode, maintenance_ts, created_ts FROM repository_info"
        )
        if row is None:
            raise RepositoryError("repository_info is missing")
        row["maintenance_mode"] = bool(row["maintenance_mode"])
        row["database"] = str(self.path)
        return row

    async def set_maintenance(self, enabled: bool) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE repository_info SET maintenance_mode = ?, maintenance_ts = ? WHERE id = 1",
                (int(enabled), now_ts()),
            )

    async def backup(self, target: Path) -> Row:
        """An online, consistent copy through SQLite's backup API (writers are not blocked in
        WAL mode), written next to ``target`` and renamed into place once it checks out."""
        temporary = target.with_name(f".{target.name}.partial")
        temporary.unlink(missing_ok=True)
        try:
            async with aiosqlite.connect(str(temporary)) as copy:
                async with self._read_lock:
                    await self._reader.backup(copy)
                async with copy.execute("PRAGMA integrity_check") as cur:
                    check = [r[0] for r in await cur.fetchall()]
            if check != ["ok"]:
                raise RepositoryError(f"the backup copy failed its integrity check: {'; '.join(check[:5])}")
            temporary.replace(target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return {"path": str(target), "bytes": target.stat().st_size, "integrity_check": "ok"}

    async def integrity_check(self) -> Row:
        async with self._read_lock:
            async with self._reader.execute("PRAGMA integrity_check") as cur:
                integrity = [r[0] for r in await cur.fetchall()]
            async with self._reader.execute("PRAGMA foreign_key_check") as cur:
                foreign = [f"{r[0]} row {r[1]} -> {r[2]}" for r in await cur.fetchall()]
        return {"integrity_check": integrity, "foreign_key_check": foreign, "ok": integrity == ["ok"] and not foreign}

    # ------------------------------------------------------------------ jobs

    async def get_job(self, name: str) -> Row:
        row = await self._one("SELECT * FROM job WHERE job_name = ?", (name,))
        if row is None:
            raise NotFound(f"no job named {name!r}")
        return row

    async def find_job(self, name: str) -> Row | None:
        return await self._one("SELECT * FROM job WHERE job_name = ?", (name,))

    async def jobs_in_group(self, group: str) -> list[Row]:
        return await self._all("SELECT * FROM job WHERE job_group = ? ORDER BY job_name", (group,))

    async def job_steps(self, job_key: int) -> list[StepDef]:
        rows = await self._all("SELECT * FROM job_step WHERE job_key = ? ORDER BY job_step", (job_key,))
        return [_step_from_row(r) for r in rows]

    async def import_job(
        self, name: str, group: str | None, job_file: str, steps: Sequence[StepDef], *, force: bool
    ) -> str:
        """Add a job, or replace its steps with ``force``. Returns created/replaced/exists."""
        now = now_ts()
        async with self._tx() as conn:
            async with conn.execute("SELECT job_key FROM job WHERE job_name = ?", (name,)) as cur:
                row = await cur.fetchone()
            if row is not None and not force:
                return "exists"
            if row is None:
                cur2 = await conn.execute(
                    "INSERT INTO job (job_name, job_group, job_file, created_ts, updated_ts) VALUES (?, ?, ?, ?, ?)",
                    (name, group, job_file, now, now),
                )
                job_key = cur2.lastrowid
                outcome = "created"
            else:
                job_key = row[0]
                await conn.execute(
                    "UPDATE job SET job_group = coalesce(?, job_group), job_file = ?, updated_ts = ? WHERE job_key = ?",
                    (group, job_file, now, job_key),
                )
                await conn.execute("DELETE FROM job_step WHERE job_key = ?", (job_key,))
                outcome = "replaced"
            await conn.executemany(
                f"INSERT INTO job_step (job_key, {', '.join(STEP_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' for _ in STEP_COLUMNS)})",
                [(job_key, *(_sql_value(getattr(s, c)) for c in STEP_COLUMNS)) for s in steps],
            )
        return outcome

    async def rename_job(self, old: str, new: str) -> int:
        """Rename a job; its schedules (a schedule's name means the job before any group of that
        name) follow it, unless the new name already has that schedule. Returns how many moved."""
        async with self._tx() as conn:
            await self._require_absent(
                conn, "SELECT 1 FROM job WHERE job_name = ?", (new,), f"a job named {new!r} already exists"
            )
            cur = await conn.execute(
                "UPDATE job SET job_name = ?, updated_ts = ? WHERE job_name = ?", (new, now_ts(), old)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no job named {old!r}")
            cur = await conn.execute("UPDATE OR IGNORE schedule SET target_name = ? WHERE target_name = ?", (new, old))
            moved = cur.rowcount
            await conn.execute("DELETE FROM schedule WHERE target_name = ?", (old,))  # duplicates of new's
            return moved

    async def set_job_group(self, name: str, group: str | None) -> None:
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE job SET job_group = ?, updated_ts = ? WHERE job_name = ?", (group, now_ts(), name)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no job named {name!r}")

    async def remove_job(self, name: str) -> int:
        """Remove a job and its schedules (they meant the job); returns how many schedules went."""
        async with self._tx() as conn:
            cur = await conn.execute("DELETE FROM job WHERE job_name = ?", (name,))
            if cur.rowcount == 0:
                raise NotFound(f"no job named {name!r}")
            cur = await conn.execute("DELETE FROM schedule WHERE target_name = ?", (name,))
            return cur.rowcount

    async def list_jobs(self, status: str | None = None) -> list[Row]:
        sql = (
            "SELECT j.job_name, j.job_group, coalesce(r.status, ?) AS status, r.run_id, "
            "r.start_ts, r.end_ts, r.current_step FROM job j LEFT JOIN job_run r ON r.job_key = j.job_key"
        )
        params: list[Any] = [RunStatus.NOT_RUNNING.value]
        if status is not None:
            sql += " WHERE coalesce(r.status, ?) = ?"
            params += [RunStatus.NOT_RUNNING.value, status]
        sql += " ORDER BY j.job_name"
        return await self._all(sql, params)

    async def paused_runs(self) -> list[Row]:
        """Every current run that is Paused: job name, job key, run key."""
        return await self._all(
            "SELECT j.job_name, j.job_key, r.run_key FROM job_run r JOIN job j ON j.job_key = r.job_key "
            "WHERE r.status = ? ORDER BY j.job_name",
            (RunStatus.PAUSED.value,),
        )

    async def current_run(self, job_key: int) -> Row | None:
        return await self._one("SELECT * FROM job_run WHERE job_key = ?", (job_key,))

    async def reset_run(self, job_key: int, reason: str) -> str | None:
        """Set a run left in a running status back to ``Not Running``; returns the old status."""
        async with self._tx() as conn:
            async with conn.execute("SELECT status FROM job_run WHERE job_key = ?", (job_key,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            await conn.execute(
                "UPDATE job_run SET status = ?, status_reason = ?, end_ts = coalesce(end_ts, ?) WHERE job_key = ?",
                (RunStatus.NOT_RUNNING.value, reason, now_ts(), job_key),
            )
            return str(row[0])

    async def fail_abandoned_runs(self, reason: str) -> tuple[list[Row], list[Row]]:
        """Crash recovery: every run left in an active status becomes ``Failed`` with ``reason``;
        its steps left running become failures. Returns the runs and those steps' process groups."""
        statuses = [s.value for s in ACTIVE_RUN_STATUSES]
        marks = ", ".join("?" for _ in statuses)
        async with self._tx() as conn:
            async with conn.execute(
                f"SELECT r.run_key, r.run_id, r.status, j.job_name FROM job_run r JOIN job j USING (job_key) "
                f"WHERE r.status IN ({marks})",
                statuses,
            ) as cur:
                rows = [dict(r) for r in await cur.fetchall()]
            async with conn.execute(
                "SELECT s.run_key, r.run_id, s.job_step, s.pgid FROM job_run_step s "
                f"JOIN job_run r USING (run_key) WHERE s.status = 'Running' AND r.status IN ({marks})",
                statuses,
            ) as cur:
                orphans = [dict(r) for r in await cur.fetchall()]
            if rows:
                now = now_ts()
                await conn.execute(
                    "UPDATE job_run_step SET status = 'Failure', message = ?, end_ts = ? "
                    f"WHERE status = 'Running' AND run_key IN (SELECT run_key FROM job_run WHERE status IN ({marks}))",
                    (reason, now, *statuses),
                )
                await conn.execute(
                    f"UPDATE job_run SET status = ?, status_reason = ?, end_ts = ? WHERE status IN ({marks})",
                    (RunStatus.FAILED.value, reason, now, *statuses),
                )
            return rows, orphans

    async def step_started(self, run_key: int, job_step: int, start_ts: str, pgid: int) -> None:
        """Record a step's process group the moment it exists (for recovery after a crash).
        One statement in autocommit mode: atomic by itself, one trip to the database thread."""
        statement = (
            "UPDATE job_run_step SET status = 'Running', start_ts = ?, pgid = ? WHERE run_key = ? AND job_step = ?",
            (start_ts, pgid, run_key, job_step),
        )
        if self._write_at_once([statement]):
            return
        async with self._write_lock:
            await self._writer.execute(*statement)

    # ------------------------------------------------------------------ runs

    async def create_run(self, run: NewRun) -> int:
        """Archive the job's previous run (if any) and insert the new one with its frozen steps
        and events, in one transaction. Returns the new run key."""
        async with self._tx() as conn:
            async with conn.execute("SELECT 1 FROM job WHERE job_key = ?", (run.job_key,)) as cur:
                if await cur.fetchone() is None:  # removed by a request that ran meanwhile
                    raise NotFound("the job was removed while it was being started")
            await self._archive_current(conn, run.job_key)
            run.run_id = await self._unique_run_id(conn, run.job_key, run.run_id)
            cur = await conn.execute(
                "INSERT INTO job_run (run_id, job_key, status, start_step, end_step, last_completed_step, "
                "start_ts, log_file, resumed_from, one_off_steps, temp_args, skip_events, no_success_email, "
                "requested_by, variables) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.job_key,
                    run.status,
                    run.start_step,
                    run.end_step,
                    run.last_completed_step,
                    run.start_ts,
                    run.log_file,
                    run.resumed_from,
                    int(run.one_off),
                    json.dumps(run.temp_args),
                    json.dumps(run.skip_events),
                    int(run.no_success_email),
                    run.requested_by,
                    json.dumps(run.variables),
                ),
            )
            run_key = cur.lastrowid
            assert run_key is not None
            await conn.executemany(
                f"INSERT INTO job_run_step (run_key, {', '.join(STEP_COLUMNS)}, status, output, message) "
                f"VALUES (?, {', '.join('?' for _ in STEP_COLUMNS)}, ?, ?, ?)",
                [
                    (run_key, *(_sql_value(getattr(s.step, c)) for c in STEP_COLUMNS), s.status, s.output, s.message)
                    for s in run.steps
                ],
            )
            await conn.executemany(
                "INSERT INTO job_run_event (run_key, event_name, action_type, event_type, event_item, status) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (run_key, e["event_name"], e["action_type"], e["event_type"], e["event_item"], e["status"])
                    for e in run.events
                ],
            )
            return int(run_key)

    @staticmethod
    async def _unique_run_id(conn: aiosqlite.Connection, job_key: int, run_id: str) -> str:
        """Run ids are job key + start second; a second run of the job in the same second gets _2, _3…"""
        async with conn.execute(
            "SELECT run_id FROM job_run_hist WHERE job_key = ? AND (run_id = ? OR run_id GLOB ?)",
            (job_key, run_id, f"{run_id}_*"),
        ) as cur:
            taken = {r[0] for r in await cur.fetchall()}
        if run_id not in taken:
            return run_id
        n = 2
        while f"{run_id}_{n}" in taken:
            n += 1
        return f"{run_id}_{n}"

    async def _archive_current(self, conn: aiosqlite.Connection, job_key: int) -> None:
        async with conn.execute("SELECT run_key FROM job_run WHERE job_key = ?", (job_key,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return
        run_key = row[0]
        await conn.execute(
            f"INSERT INTO job_run_hist ({_RUN_COLS}, archived_ts) SELECT {_RUN_COLS}, ? FROM job_run WHERE run_key = ?",
            (now_ts(), run_key),
        )
        await conn.execute(
            f"INSERT INTO job_run_step_hist ({_RUN_STEP_COLS}) SELECT {_RUN_STEP_COLS} FROM job_run_step "
            "WHERE run_key = ?",
            (run_key,),
        )
        await conn.execute(
            f"INSERT INTO job_run_event_hist ({_RUN_EVENT_COLS}) SELECT {_RUN_EVENT_COLS} FROM job_run_event "
            "WHERE run_key = ?",
            (run_key,),
        )
        await conn.execute("DELETE FROM job_run WHERE run_key = ?", (run_key,))

    async def update_run(self, run_key: int, **fields: Any) -> None:
        """Change columns of a current run (status, reason, end, duration, …) in one commit."""
        async with self._tx() as conn:
            await self._update_run(conn, run_key, fields)

    @staticmethod
    async def _update_run(conn: aiosqlite.Connection, run_key: int, fields: Mapping[str, Any]) -> None:
        if fields:
            await conn.execute(*_run_update(run_key, fields))

    async def finish_step(self, run_key: int, job_step: int, step: Mapping[str, Any], run: Mapping[str, Any]) -> None:
        """A step's outcome and the run's progress, committed together: the durability point.

        The step row's UPDATE moves the run's current/last completed step through a trigger
        (migration 0003), so the usual case is one atomic statement; other run fields (variables
        set by start_process) join it in one transaction."""
        unknown = set(step) - _STEP_MUTABLE
        if unknown:
            raise RepositoryError(f"not run step columns: {', '.join(sorted(unknown))}")
        assignments = ", ".join(f"{k} = ?" for k in step)
        sql = f"UPDATE job_run_step SET {assignments} WHERE run_key = ? AND job_step = ?"
        values = (*(_json_value(v) for v in step.values()), run_key, job_step)
        extra = {k: v for k, v in run.items() if k not in ("current_step", "last_completed_step")}
        statements: list[tuple[str, Sequence[Any]]] = [(sql, values)]
        if extra:
            statements.append(_run_update(run_key, extra))
        if self._write_at_once(statements):
            return
        if not extra:
            async with self._write_lock:
                await self._writer.execute(sql, values)
            return
        async with self._tx() as conn:
            for statement in statements:
                await conn.execute(*statement)

    async def set_event_status(self, run_key: int, event_name: str, status: str) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE job_run_event SET status = ?, status_ts = ? WHERE run_key = ? AND event_name = ?",
                (status, now_ts(), run_key, event_name),
            )

    async def run_detail(self, job_key: int) -> Row | None:
        """The job's current run with its steps and events, from one snapshot."""
        async with self._snapshot() as conn:
            async with conn.execute("SELECT * FROM job_run WHERE job_key = ?", (job_key,)) as cur:
                run = _dict(await cur.fetchone())
            if run is None:
                return None
            await self._attach(conn, run, "job_run_step", "job_run_event")
        return run

    async def run_by_key(self, run_key: int) -> Row | None:
        async with self._snapshot() as conn:
            async with conn.execute("SELECT * FROM job_run WHERE run_key = ?", (run_key,)) as cur:
                run = _dict(await cur.fetchone())
            if run is None:
                return None
            await self._attach(conn, run, "job_run_step", "job_run_event")
        return run

    async def history(self, job_key: int, limit: int) -> list[Row]:
        """Archived runs, newest first, with their steps and events."""
        async with self._snapshot() as conn:
            async with conn.execute(
                "SELECT * FROM job_run_hist WHERE job_key = ? ORDER BY run_key DESC LIMIT ?", (job_key, limit)
            ) as cur:
                runs = [dict(r) for r in await cur.fetchall()]
            for run in runs:
                await self._attach(conn, run, "job_run_step_hist", "job_run_event_hist")
        return runs

    @staticmethod
    async def _attach(conn: aiosqlite.Connection, run: Row, step_table: str, event_table: str) -> None:
        for key in ("temp_args", "variables", "skip_events"):
            run[key] = json.loads(run[key]) if run.get(key) else ({} if key != "skip_events" else [])
        run["one_off_steps"] = bool(run["one_off_steps"])
        run["no_success_email"] = bool(run["no_success_email"])
        async with conn.execute(
            f"SELECT * FROM {step_table} WHERE run_key = ? ORDER BY job_step", (run["run_key"],)
        ) as cur:
            steps = [dict(r) for r in await cur.fetchall()]
        for step in steps:
            for name in _BOOL_FIELDS:
                step[name] = bool(step[name])
            step["attempt_log"] = json.loads(step["attempt_log"]) if step["attempt_log"] else []
            del step["run_key"]
        run["steps"] = steps
        async with conn.execute(
            f"SELECT event_name, action_type, event_type, event_item, status, status_ts FROM {event_table} "
            "WHERE run_key = ? ORDER BY event_name",
            (run["run_key"],),
        ) as cur:
            run["events"] = [dict(r) for r in await cur.fetchall()]

    async def enabled_events(self, job_key: int) -> list[Row]:
        return await self._all(
            "SELECT event_name, action_type, event_type, event_item FROM job_event "
            "WHERE job_key = ? AND enabled = 1 ORDER BY event_name",
            (job_key,),
        )

    async def latest_process_log(self, process_name: str) -> Row | None:
        return await self._one(
            "SELECT l.* FROM process_log l JOIN process p USING (process_key) WHERE p.process_name = ? "
            "ORDER BY l.process_log_key DESC LIMIT 1",
            (process_name,),
        )

    # ------------------------------------------------------------------ events

    async def add_event(self, job: str, name: str, action: str, event_type: str, item: str) -> None:
        async with self._tx() as conn:
            job_key = await self._job_key(conn, job)
            await self._require_absent(
                conn,
                "SELECT 1 FROM job_event WHERE job_key = ? AND event_name = ?",
                (job_key, name),
                f"job {job!r} already has an event named {name!r}",
            )
            await conn.execute(
                "INSERT INTO job_event (job_key, event_name, action_type, event_type, event_item, created_ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_key, name, action, event_type, item, now_ts()),
            )

    async def set_events_enabled(self, job: str, names: Iterable[str], enabled: bool) -> None:
        async with self._tx() as conn:
            job_key = await self._job_key(conn, job)
            for name in names:
                cur = await conn.execute(
                    "UPDATE job_event SET enabled = ? WHERE job_key = ? AND event_name = ?",
                    (int(enabled), job_key, name),
                )
                if cur.rowcount == 0:
                    raise NotFound(f"job {job!r} has no event named {name!r}")

    async def remove_events(self, job: str, names: Iterable[str]) -> None:
        async with self._tx() as conn:
            job_key = await self._job_key(conn, job)
            for name in names:
                cur = await conn.execute("DELETE FROM job_event WHERE job_key = ? AND event_name = ?", (job_key, name))
                if cur.rowcount == 0:
                    raise NotFound(f"job {job!r} has no event named {name!r}")

    async def rename_event(self, job: str, old: str, new: str) -> None:
        async with self._tx() as conn:
            job_key = await self._job_key(conn, job)
            await self._require_absent(
                conn,
                "SELECT 1 FROM job_event WHERE job_key = ? AND event_name = ?",
                (job_key, new),
                f"job {job!r} already has an event named {new!r}",
            )
            cur = await conn.execute(
                "UPDATE job_event SET event_name = ? WHERE job_key = ? AND event_name = ?", (new, job_key, old)
            )
            if cur.rowcount == 0:
                raise NotFound(f"job {job!r} has no event named {old!r}")

    async def list_events(self, job_key: int) -> list[Row]:
        rows = await self._all(
            "SELECT event_name, action_type, event_type, event_item, enabled, created_ts FROM job_event "
            "WHERE job_key = ? ORDER BY event_name",
            (job_key,),
        )
        for row in rows:
            row["enabled"] = bool(row["enabled"])
        return rows

    # ------------------------------------------------------------------ processes

    async def upsert_process(self, name: str, settings: Mapping[str, Any], *, update_only: bool) -> str:
        """Create a process or change the given settings. Returns created/updated."""
        now = now_ts()
        async with self._tx() as conn:
            async with conn.execute("SELECT process_key FROM process WHERE process_name = ?", (name,)) as cur:
                row = await cur.fetchone()
            if row is None:
                if update_only:
                    raise NotFound(f"no process named {name!r}")
                values = {**_PROCESS_DEFAULTS, **settings}
                cols = ", ".join(values)
                await conn.execute(
                    f"INSERT INTO process (process_name, {cols}, created_ts, updated_ts) "
                    f"VALUES (?, {', '.join('?' for _ in values)}, ?, ?)",
                    (name, *(_sql_value(v) for v in values.values()), now, now),
                )
                return "created"
            if settings:
                assignments = ", ".join(f"{col} = ?" for col in settings)
                await conn.execute(
                    f"UPDATE process SET {assignments}, updated_ts = ? WHERE process_key = ?",
                    (*(_sql_value(v) for v in settings.values()), now, row[0]),
                )
            return "updated"

    async def get_process(self, name: str) -> Row:
        row = await self._one("SELECT * FROM process WHERE process_name = ?", (name,))
        if row is None:
            raise NotFound(f"no process named {name!r}")
        row["currency_date_flag"] = bool(row["currency_date_flag"])
        return row

    async def remove_process(self, name: str) -> None:
        async with self._tx() as conn:
            async with conn.execute("SELECT process_key FROM process WHERE process_name = ?", (name,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no process named {name!r}")
            async with conn.execute(
                "SELECT c.table_schema, c.table_name FROM process_currency_link l "
                "JOIN data_currency c USING (currency_key) WHERE l.process_key = ? ORDER BY 1, 2",
                (row[0],),
            ) as cur:
                links = list(await cur.fetchall())
            if links:
                tables = ", ".join(f"{s}.{t}" for s, t in links)
                first = links[0]
                raise Conflict(
                    f"process {name!r} is linked to {tables}; remove the links first "
                    f"(loadmgrctl link remove {name} {first[0]} {first[1]})"
                )
            await conn.execute("DELETE FROM process WHERE process_key = ?", (row[0],))

    async def rename_process(self, old: str, new: str) -> None:
        async with self._tx() as conn:
            await self._require_absent(
                conn, "SELECT 1 FROM process WHERE process_name = ?", (new,), f"a process named {new!r} already exists"
            )
            cur = await conn.execute(
                "UPDATE process SET process_name = ?, updated_ts = ? WHERE process_name = ?", (new, now_ts(), old)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no process named {old!r}")

    async def process_details(self, name: str) -> Row:
        async with self._snapshot() as conn:
            async with conn.execute("SELECT * FROM process WHERE process_name = ?", (name,)) as cur:
                process = _dict(await cur.fetchone())
            if process is None:
                raise NotFound(f"no process named {name!r}")
            process["currency_date_flag"] = bool(process["currency_date_flag"])
            async with conn.execute(
                "SELECT batch_nbr, run_id, job_name, load_strategy, currency_start_dttm, currency_end_dttm, "
                "status, start_ts, end_ts, duration, row_count FROM process_log WHERE process_key = ? "
                "ORDER BY process_log_key DESC LIMIT 1",
                (process["process_key"],),
            ) as cur:
                latest = _dict(await cur.fetchone())
            async with conn.execute(
                "SELECT c.table_schema, c.table_name FROM process_currency_link l "
                "JOIN data_currency c USING (currency_key) WHERE l.process_key = ? ORDER BY 1, 2",
                (process["process_key"],),
            ) as cur:
                links = [f"{r[0]}.{r[1]}" for r in await cur.fetchall()]
        return {"process": process, "latest_log": latest, "linked_tables": links}

    async def open_process_log(
        self, process_key: int, batch_nbr: str, run_id: str, job_name: str, strategy: str, start: str, end: str
    ) -> tuple[int, str]:
        """A new Running entry; returns its key and batch number (made unique per process)."""
        async with self._tx() as conn:
            async with conn.execute(
                "SELECT batch_nbr FROM process_log WHERE process_key = ? AND (batch_nbr = ? OR batch_nbr GLOB ?)",
                (process_key, batch_nbr, f"{batch_nbr}_*"),
            ) as cur:
                taken = {r[0] for r in await cur.fetchall()}
            if batch_nbr in taken:  # a second batch of the process in the same second
                n = 2
                while f"{batch_nbr}_{n}" in taken:
                    n += 1
                batch_nbr = f"{batch_nbr}_{n}"
            cur = await conn.execute(
                "INSERT INTO process_log (process_key, batch_nbr, run_id, job_name, load_strategy, "
                "currency_start_dttm, currency_end_dttm, status, start_ts) VALUES (?, ?, ?, ?, ?, ?, ?, 'Running', ?)",
                (process_key, batch_nbr, run_id, job_name, strategy, start, end, now_ts()),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid), batch_nbr

    async def close_process_log(self, process_log_key: int, **fields: Any) -> None:
        allowed = {"status", "end_ts", "duration", "row_count", "currency_end_dttm"}
        if set(fields) - allowed:
            raise RepositoryError(f"not process log columns: {', '.join(sorted(set(fields) - allowed))}")
        async with self._tx() as conn:
            assignments = ", ".join(f"{k} = ?" for k in fields)
            await conn.execute(
                f"UPDATE process_log SET {assignments} WHERE process_log_key = ?", (*fields.values(), process_log_key)
            )

    async def last_complete_window_end(self, process_key: int) -> str | None:
        row = await self._one(
            "SELECT max(currency_end_dttm) AS end_dttm FROM process_log WHERE process_key = ? AND status = 'Complete'",
            (process_key,),
        )
        return row["end_dttm"] if row else None

    async def linked_currencies(self, process_key: int) -> list[Row]:
        """Each linked table with its current currency (None when nothing is logged), first linked first."""
        return await self._all(
            "SELECT c.currency_key, c.table_schema, c.table_name, "
            "(SELECT currency_dttm FROM data_currency_log g WHERE g.currency_key = c.currency_key "
            " ORDER BY currency_log_key DESC LIMIT 1) AS currency_dttm, "
            "(SELECT currency_date FROM data_currency_log g WHERE g.currency_key = c.currency_key "
            " ORDER BY currency_log_key DESC LIMIT 1) AS currency_date "
            "FROM process_currency_link l JOIN data_currency c USING (currency_key) "
            "WHERE l.process_key = ? ORDER BY l.created_ts, c.currency_key",
            (process_key,),
        )

    async def process_log_entries(self, job_name: str | None = None, limit: int = 50) -> list[Row]:
        sql = (
            "SELECT p.process_name, l.batch_nbr, l.run_id, l.job_name, l.load_strategy, l.currency_start_dttm, "
            "l.currency_end_dttm, l.status, l.start_ts, l.end_ts, l.duration, l.row_count, l.process_log_key "
            "FROM process_log l JOIN process p USING (process_key)"
        )
        params: list[Any] = []
        if job_name is not None:
            sql += " WHERE l.job_name = ?"
            params.append(job_name)
        sql += " ORDER BY l.process_log_key DESC LIMIT ?"
        params.append(limit)
        return await self._all(sql, params)

    async def add_file_log(self, process_log_key: int, files: Sequence[Mapping[str, Any]]) -> None:
        async with self._tx() as conn:
            await conn.executemany(
                "INSERT INTO file_log (process_log_key, file_name, record_count, file_size, file_type, file_date, "
                "logged_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        process_log_key,
                        f["file_name"],
                        f["record_count"],
                        f["file_size"],
                        f.get("file_type"),
                        f.get("file_date"),
                        now_ts(),
                    )
                    for f in files
                ],
            )

    async def file_log(self, process_log_key: int) -> list[Row]:
        return await self._all(
            "SELECT file_name, record_count, file_size, file_type, file_date, logged_ts FROM file_log "
            "WHERE process_log_key = ? ORDER BY file_log_key",
            (process_log_key,),
        )

    # ------------------------------------------------------------------ data currency

    async def configure_currency(self, schema: str, table: str, settings: Mapping[str, Any]) -> str:
        now = now_ts()
        async with self._tx() as conn:
            async with conn.execute(
                "SELECT currency_key FROM data_currency WHERE table_schema = ? AND table_name = ?", (schema, table)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                cols = ", ".join(settings)
                await conn.execute(
                    f"INSERT INTO data_currency (table_schema, table_name, {cols}, created_ts, updated_ts) "
                    f"VALUES (?, ?, {', '.join('?' for _ in settings)}, ?, ?)",
                    (schema, table, *(_sql_value(v) for v in settings.values()), now, now),
                )
                return "created"
            assignments = ", ".join(f"{col} = ?" for col in settings)
            await conn.execute(
                f"UPDATE data_currency SET {assignments}, updated_ts = ? WHERE currency_key = ?",
                (*(_sql_value(v) for v in settings.values()), now, row[0]),
            )
            return "updated"

    async def remove_currency(self, schema: str, table: str) -> None:
        async with self._tx() as conn:
            key = await self._currency_key(conn, schema, table)
            async with conn.execute(
                "SELECT p.process_name FROM process_currency_link l JOIN process p USING (process_key) "
                "WHERE l.currency_key = ? ORDER BY 1",
                (key,),
            ) as cur:
                linked = [r[0] for r in await cur.fetchall()]
            if linked:
                raise Conflict(
                    f"table {schema}.{table} is linked to process(es) {', '.join(linked)}; remove the links "
                    f"first (loadmgrctl link remove {linked[0]} {schema} {table})"
                )
            await conn.execute("DELETE FROM data_currency WHERE currency_key = ?", (key,))

    async def rename_currency(self, schema: str, table: str, new_schema: str, new_table: str) -> None:
        async with self._tx() as conn:
            key = await self._currency_key(conn, schema, table)
            await self._require_absent(
                conn,
                "SELECT 1 FROM data_currency WHERE table_schema = ? AND table_name = ?",
                (new_schema, new_table),
                f"data currency for {new_schema}.{new_table} already exists",
            )
            await conn.execute(
                "UPDATE data_currency SET table_schema = ?, table_name = ?, updated_ts = ? WHERE currency_key = ?",
                (new_schema, new_table, now_ts(), key),
            )

    async def currency_details(self, schema: str, table: str) -> Row:
        async with self._snapshot() as conn:
            async with conn.execute(
                "SELECT * FROM data_currency WHERE table_schema = ? AND table_name = ?", (schema, table)
            ) as cur:
                currency = _dict(await cur.fetchone())
            if currency is None:
                raise NotFound(f"no data currency configured for {schema}.{table}")
            for flag in ("currency_date_offset", "active"):
                currency[flag] = bool(currency[flag])
            async with conn.execute(
                "SELECT currency_dttm, currency_date, run_id, logged_ts FROM data_currency_log "
                "WHERE currency_key = ? ORDER BY currency_log_key DESC LIMIT 1",
                (currency["currency_key"],),
            ) as cur:
                latest = _dict(await cur.fetchone())
            async with conn.execute(
                "SELECT p.process_name FROM process_currency_link l JOIN process p USING (process_key) "
                "WHERE l.currency_key = ? ORDER BY 1",
                (currency["currency_key"],),
            ) as cur:
                linked = [r[0] for r in await cur.fetchall()]
        return {
            "currency": currency,
            "current_currency_dttm": latest["currency_dttm"] if latest else None,
            "current_currency_date": latest["currency_date"] if latest else None,
            "latest_log": latest,
            "linked_processes": linked,
        }

    async def get_currency(self, schema: str, table: str) -> Row:
        row = await self._one("SELECT * FROM data_currency WHERE table_schema = ? AND table_name = ?", (schema, table))
        if row is None:
            raise NotFound(f"no data currency configured for {schema}.{table}")
        return row

    async def log_currency(self, currency_key: int, dttm: str, day: str, run_id: str | None) -> bool:
        """Add a currency log row if ``dttm`` differs from the latest one; True if added."""
        async with self._tx() as conn:
            async with conn.execute(
                "SELECT currency_dttm FROM data_currency_log WHERE currency_key = ? "
                "ORDER BY currency_log_key DESC LIMIT 1",
                (currency_key,),
            ) as cur:
                latest = await cur.fetchone()
            if latest is not None and latest[0] == dttm:
                return False
            await conn.execute(
                "INSERT INTO data_currency_log (currency_key, currency_dttm, currency_date, run_id, logged_ts) "
                "VALUES (?, ?, ?, ?, ?)",
                (currency_key, dttm, day, run_id, now_ts()),
            )
            return True

    # ------------------------------------------------------------------ links

    async def create_link(self, process: str, schema: str, table: str) -> None:
        async with self._tx() as conn:
            process_key = await self._process_key(conn, process)
            currency_key = await self._currency_key(conn, schema, table)
            await self._require_absent(
                conn,
                "SELECT 1 FROM process_currency_link WHERE process_key = ? AND currency_key = ?",
                (process_key, currency_key),
                f"process {process!r} is already linked to {schema}.{table}",
            )
            await conn.execute(
                "INSERT INTO process_currency_link (process_key, currency_key, created_ts) VALUES (?, ?, ?)",
                (process_key, currency_key, now_ts()),
            )

    async def remove_link(self, process: str, schema: str, table: str) -> None:
        async with self._tx() as conn:
            process_key = await self._process_key(conn, process)
            currency_key = await self._currency_key(conn, schema, table)
            cur = await conn.execute(
                "DELETE FROM process_currency_link WHERE process_key = ? AND currency_key = ?",
                (process_key, currency_key),
            )
            if cur.rowcount == 0:
                raise NotFound(f"process {process!r} is not linked to {schema}.{table}")

    # ------------------------------------------------------------------ schedules

    async def add_schedule(self, target: str, cron: str, timezone: str | None) -> None:
        async with self._tx() as conn:
            await self._require_absent(
                conn,
                "SELECT 1 FROM schedule WHERE target_name = ? AND cron = ?",
                (target, cron),
                f"{target!r} already has the schedule {cron!r}",
            )
            await conn.execute(
                "INSERT INTO schedule (target_name, cron, timezone, created_ts) VALUES (?, ?, ?, ?)",
                (target, cron, timezone, now_ts()),
            )

    async def remove_schedules(self, target: str, cron: str | None) -> int:
        async with self._tx() as conn:
            if cron is None:
                cur = await conn.execute("DELETE FROM schedule WHERE target_name = ?", (target,))
            else:
                cur = await conn.execute("DELETE FROM schedule WHERE target_name = ? AND cron = ?", (target, cron))
            if cur.rowcount == 0:
                what = f"the schedule {cron!r}" if cron else "any schedule"
                raise NotFound(f"{target!r} does not have {what}")
            return int(cur.rowcount)

    async def set_schedules_enabled(self, target: str, enabled: bool) -> int:
        async with self._tx() as conn:
            cur = await conn.execute("UPDATE schedule SET enabled = ? WHERE target_name = ?", (int(enabled), target))
            if cur.rowcount == 0:
                raise NotFound(f"{target!r} does not have any schedule")
            return int(cur.rowcount)

    async def list_schedules(self) -> list[Row]:
        rows = await self._all(
            "SELECT schedule_key, target_name, cron, timezone, enabled, last_fire_ts, created_ts FROM schedule "
            "ORDER BY target_name, cron"
        )
        for row in rows:
            row["enabled"] = bool(row["enabled"])
        return rows

    async def schedule_fired(self, schedule_key: int, fire_ts: str) -> None:
        async with self._tx() as conn:
            await conn.execute("UPDATE schedule SET last_fire_ts = ? WHERE schedule_key = ?", (fire_ts, schedule_key))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    async def _require_absent(conn: aiosqlite.Connection, sql: str, params: Sequence[Any], message: str) -> None:
        async with conn.execute(sql, params) as cur:
            if await cur.fetchone() is not None:
                raise AlreadyExists(message)

    @staticmethod
    async def _job_key(conn: aiosqlite.Connection, name: str) -> int:
        async with conn.execute("SELECT job_key FROM job WHERE job_name = ?", (name,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no job named {name!r}")
        return int(row[0])

    @staticmethod
    async def _process_key(conn: aiosqlite.Connection, name: str) -> int:
        async with conn.execute("SELECT process_key FROM process WHERE process_name = ?", (name,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no process named {name!r}")
        return int(row[0])

    @staticmethod
    async def _currency_key(conn: aiosqlite.Connection, schema: str, table: str) -> int:
        async with conn.execute(
            "SELECT currency_key FROM data_currency WHERE table_schema = ? AND table_name = ?", (schema, table)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no data currency configured for {schema}.{table}")
        return int(row[0])


_PROCESS_DEFAULTS: dict[str, Any] = {
    "process_type": "ingestion",
    "subject_area": None,
    "row_count_type": "Batch",
    "row_count_property": None,
    "currency_date_flag": False,
    "currency_start_offset": 0,
    "currency_end_offset": 0,
}


@dataclass
class NewStep:
    step: StepDef
    status: str = "Pending"
    output: str | None = None
    message: str | None = None


@dataclass
class NewRun:
    job_key: int
    run_id: str
    status: str
    start_ts: str
    log_file: str
    steps: list[NewStep]
    events: list[Row]
    start_step: int | None = None
    end_step: int | None = None
    last_completed_step: int | None = None
    resumed_from: str | None = None
    one_off: bool = False
    temp_args: dict[str, str] = field(default_factory=dict)
    skip_events: list[str] = field(default_factory=list)
    no_success_email: bool = False
    requested_by: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)


_RUN_COLUMNS = (
    "run_key",
    "run_id",
    "job_key",
    "status",
    "status_reason",
    "start_step",
    "end_step",
    "last_completed_step",
    "current_step",
    "start_ts",
    "end_ts",
    "duration",
    "log_file",
    "resumed_from",
    "one_off_steps",
    "temp_args",
    "skip_events",
    "no_success_email",
    "requested_by",
    "variables",
)
_RUN_COLS = ", ".join(_RUN_COLUMNS)
_RUN_STEP_COLS = ", ".join(
    (
        "run_key",
        *STEP_COLUMNS,
        "status",
        "start_ts",
        "end_ts",
        "duration",
        "exit_code",
        "attempts",
        "output",
        "message",
        "pgid",
    )
)
_RUN_EVENT_COLS = "run_key, event_name, action_type, event_type, event_item, status, status_ts"
_RUN_MUTABLE = frozenset(
    {
        "status",
        "status_reason",
        "last_completed_step",
        "current_step",
        "end_ts",
        "duration",
        "variables",
        "start_ts",
        "temp_args",
    }
)
_STEP_MUTABLE = frozenset(
    {"status", "start_ts", "end_ts", "duration", "exit_code", "attempts", "output", "message", "attempt_log"}
)


def _run_update(run_key: int, fields: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE of a current run's mutable columns, with its parameters."""
    unknown = set(fields) - _RUN_MUTABLE
    if unknown:
        raise RepositoryError(f"not run columns: {', '.join(sorted(unknown))}")
    assignments = ", ".join(f"{k} = ?" for k in fields)
    return f"UPDATE job_run SET {assignments} WHERE run_key = ?", (*(_json_value(v) for v in fields.values()), run_key)


def _json_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else _sql_value(value)


def _sql_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3.complete_statement knows the grammar)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
