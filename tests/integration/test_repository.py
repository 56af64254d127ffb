"""The repository on a real SQLite file: migrations, pragmas, atomic writes, concurrency."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from loadmgrd.errors import AlreadyExists, Conflict, NotFound, RepositoryError
from loadmgrd.jobfile import StepDef
from loadmgrd.repository import Repository, load_migrations

STEPS = [StepDef(10, "run_command", "echo one"), StepDef(20, "run_command", "echo two", job_step_ignore_error=True)]


@pytest.fixture
async def repo(tmp_path: Path):  # type: ignore[no-untyped-def]
    repository = await Repository.open(tmp_path / "repo" / "loadmgr.db")
    yield repository
    await repository.close()


def _schema(path: Path) -> set[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name != 'schema_migration'"
        ).fetchall()
    return {(t, n, " ".join((s or "").split())) for t, n, s in rows}


async def test_open_creates_the_file_with_wal_and_foreign_keys(repo: Repository) -> None:
    assert repo.path.exists()
    info = await repo.info()
    assert info["schema_version"] == len(load_migrations())
    assert info["maintenance_mode"] is False
    with sqlite3.connect(repo.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migration ORDER BY version")]
    assert versions == list(range(1, len(load_migrations()) + 1))


async def test_migrations_are_idempotent_and_match_a_fresh_schema(tmp_path: Path) -> None:
    first = await Repository.open(tmp_path / "a.db")
    assert await first.migrate() == []
    await first.close()
    reopened = await Repository.open(tmp_path / "a.db")
    await reopened.close()

    fresh = tmp_path / "fresh.db"
    with sqlite3.connect(fresh) as conn:
        for migration in load_migrations():
            conn.executescript(migration.sql)
    assert _schema(tmp_path / "a.db") == _schema(fresh)


async def test_newer_schema_than_known_is_refused(tmp_path: Path) -> None:
    repo = await Repository.open(tmp_path / "x.db")
    await repo.close()
    with sqlite3.connect(tmp_path / "x.db") as conn:
        conn.execute("INSERT INTO schema_migration VALUES (999, 'future', 'now')")
    with pytest.raises(RepositoryError, match="newer than this loadmgrd knows"):
        await Repository.open(tmp_path / "x.db")


async def test_import_create_exists_replace(repo: Repository) -> None:
    assert await repo.import_job("j", "g", "j.csv", STEPS, force=False) == "created"
    assert await repo.import_job("j", "h", "k.csv", STEPS[:1], force=False) == "exists"
    job = await repo.get_job("j")
    assert (job["job_group"], job["job_file"]) == ("g", "j.csv")
    assert await repo.job_steps(job["job_key"]) == STEPS
    assert await repo.import_job("j", "h", "k.csv", STEPS[:1], force=True) == "replaced"
    job = await repo.get_job("j")
    assert (job["job_group"], job["job_file"]) == ("h", "k.csv")
    assert await repo.job_steps(job["job_key"]) == STEPS[:1]


async def test_failed_transaction_leaves_nothing_behind(repo: Repository) -> None:
    await repo.import_job("j", None, "j.csv", STEPS, force=False)
    duplicate_steps = [StepDef(1, "run_command"), StepDef(1, "run_command")]
    with pytest.raises(sqlite3.IntegrityError):
        await repo.import_job("j", None, "bad.csv", duplicate_steps, force=True)
    job = await repo.get_job("j")
    assert job["job_file"] == "j.csv"
    assert await repo.job_steps(job["job_key"]) == STEPS


async def test_removing_a_job_removes_its_steps_and_events(repo: Repository) -> None:
    await repo.import_job("j", None, "j.csv", STEPS, force=False)
    await repo.add_event("j", "e", "wait", "file", "/tmp/e")
    key = (await repo.get_job("j"))["job_key"]
    await repo.remove_job("j")
    assert await repo.job_steps(key) == []
    assert await repo.list_events(key) == []
    with pytest.raises(NotFound):
        await repo.get_job("j")


async def test_links_protect_processes_and_tables(repo: Repository) -> None:
    await repo.upsert_process("p", {}, update_only=False)
    await repo.configure_currency("dw", "t", {"date_column": "d"})
    await repo.create_link("p", "dw", "t")
    with pytest.raises(AlreadyExists):
        await repo.create_link("p", "dw", "t")
    with pytest.raises(Conflict, match="link remove p dw t"):
        await repo.remove_process("p")
    with pytest.raises(Conflict):
        await repo.remove_currency("dw", "t")
    await repo.remove_link("p", "dw", "t")
    await repo.remove_process("p")
    await repo.remove_currency("dw", "t")


async def test_concurrent_writers_do_not_lose_updates(repo: Repository) -> None:
    await repo.import_job("j", None, "j.csv", STEPS, force=False)
    await asyncio.gather(*(repo.add_event("j", f"e{i}", "wait", "file", f"/tmp/{i}") for i in range(100)))
    key = (await repo.get_job("j"))["job_key"]
    assert {e["event_name"] for e in await repo.list_events(key)} == {f"e{i}" for i in range(100)}


async def test_crash_recovery_marks_active_runs_failed(repo: Repository) -> None:
    await repo.import_job("j", None, "j.csv", STEPS, force=False)
    key = (await repo.get_job("j"))["job_key"]
    with sqlite3.connect(repo.path) as conn:
        conn.execute(
            "INSERT INTO job_run (run_id, job_key, status, start_ts) "
            "VALUES ('1x', ?, 'Running', '2026-01-01T00:00:00.000000Z')",
            (key,),
        )
    recovered, orphans = await repo.fail_abandoned_runs("daemon died")
    assert [r["job_name"] for r in recovered] == ["j"]
    run = await repo.current_run(key)
    assert run is not None and (run["status"], run["status_reason"]) == ("Failed", "daemon died")
    assert orphans == []
    assert await repo.fail_abandoned_runs("again") == ([], [])


async def test_step_completion_moves_run_progress_in_the_same_statement(repo: Repository) -> None:
    from loadmgrd.repository import NewRun, NewStep

    steps = [StepDef(n, "run_command", "true") for n in (10, 20, 30)]
    await repo.import_job("j", None, "j.csv", steps, force=False)
    key = (await repo.get_job("j"))["job_key"]
    run_key = await repo.create_run(
        NewRun(
            job_key=key,
            run_id="r1",
            status="Running",
            start_ts="t",
            log_file="l",
            steps=[NewStep(s) for s in steps],
            events=[],
        )
    )
    outcome = {"status": "Success", "end_ts": "t", "duration": 0.1, "exit_code": 0, "attempts": 1}
    await repo.finish_step(run_key, 20, outcome, {"current_step": 20, "last_completed_step": 20})
    await repo.finish_step(run_key, 10, outcome, {"current_step": 10, "last_completed_step": 20})
    run = await repo.run_by_key(run_key)
    assert run is not None and (run["current_step"], run["last_completed_step"]) == (10, 20)
    failed = {**outcome, "status": "Failure", "exit_code": 1}
    await repo.finish_step(run_key, 30, failed, {"current_step": 30})
    run = await repo.run_by_key(run_key)
    assert run is not None and (run["current_step"], run["last_completed_step"]) == (30, 20)
    assert [s["status"] for s in run["steps"]] == ["Success", "Success", "Failure"]


async def test_step_writes_wait_for_another_writer_without_blocking_the_loop(tmp_path: Path) -> None:
    """A step's outcome is committed on the loop's thread only when the database is free; while
    another process holds the write lock it goes through the writer thread (which waits up to
    busy_timeout), and the event loop keeps running meanwhile. Nothing is lost either way."""
    from loadmgrd.repository import NewRun, NewStep

    repo = await Repository.open(tmp_path / "loadmgr.db", busy_timeout=20.0)
    try:
        steps = [StepDef(n, "run_command", "true") for n in (10, 20)]
        await repo.import_job("j", None, "j.csv", steps, force=False)
        key = (await repo.get_job("j"))["job_key"]
        new = NewRun(key, "r1", "Running", "t", "l", [NewStep(s) for s in steps], [])
        run_key = await repo.create_run(new)
        outcome = {"status": "Success", "end_ts": "t", "duration": 0.1, "exit_code": 0, "attempts": 1}
        await repo.finish_step(run_key, 10, outcome, {"current_step": 10, "last_completed_step": 10})

        other = sqlite3.connect(repo.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        finishing = asyncio.ensure_future(
            repo.finish_step(run_key, 20, outcome, {"current_step": 20, "last_completed_step": 20})
        )
        ticks = 0
        while ticks < 20:  # the loop goes on while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not finishing.done(), "the write cannot have been committed while another holds the lock"
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(finishing, 20)
        run = await repo.run_by_key(run_key)
        assert run is not None and run["last_completed_step"] == 20
        assert [s["status"] for s in run["steps"]] == ["Success", "Success"]
    finally:
        await repo.close()
