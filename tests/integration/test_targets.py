"""``loadmgrd.targets.Targets`` against real databases: a SQLite file and a PostgreSQL server
(tests/pg.py). Queries, scripts, the driver's errors, unknown and missing targets, a target
that is down, and configuration changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from loadmgrd.config import TargetsConfig
from loadmgrd.errors import InvalidInput
from loadmgrd.targets import TargetError, Targets
from tests.pg import PostgresServer, free_port

DOWN_TIMEOUT = 15.0  # a target that is down must fail well within this (it must not hang)


@dataclass
class Setup:
    targets: Targets
    config: list[TargetsConfig]  # config[0] is what the Targets sees (swap it to "reload")
    sqlite_path: Path
    pg_url: str

    def reconfigure(self, **changes: object) -> None:
        self.config[0] = self.config[0].model_copy(update=changes)


@pytest.fixture(scope="module")
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.create_database("targets_it")


@pytest.fixture
def setup(tmp_path: Path, pg_url: str) -> Iterator[Setup]:
    sqlite_path = tmp_path / "lite.db"
    config = [
        TargetsConfig(
            default_target="lite",
            urls={
                "lite": f"sqlite:///{sqlite_path}",
                "pg": pg_url,
                "down": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere?connect_timeout=5",
            },
        )
    ]
    targets = Targets(lambda: config[0])
    try:
        yield Setup(targets, config, sqlite_path, pg_url)
    finally:
        targets.dispose()


@pytest.fixture
def pg_table(pg_url: str) -> Iterator[str]:
    """A fresh table name in the PostgreSQL database (dropped afterwards)."""
    name = f"t_{time.monotonic_ns()}"
    yield name
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- resolve


def test_resolve_the_default_target(setup: Setup) -> None:
    assert setup.targets.resolve(None) == "lite"
    assert setup.targets.resolve("") == "lite"
    assert setup.targets.resolve("pg") == "pg"


def test_resolve_an_unknown_target_lists_the_known_ones(setup: Setup) -> None:
    with pytest.raises(InvalidInput) as caught:
        setup.targets.resolve("warehouse")
    assert caught.value.message == "target 'warehouse' is not in [targets] (down, lite, pg)"


def test_resolve_without_a_default(setup: Setup) -> None:
    setup.reconfigure(default_target=None)
    with pytest.raises(InvalidInput) as caught:
        setup.targets.resolve(None)
    assert "no target given" in caught.value.message
    assert "default_target" in caught.value.message
    assert setup.targets.resolve("pg") == "pg"  # a named target still works


def test_resolve_with_no_targets_at_all() -> None:
    empty = TargetsConfig()
    targets = Targets(lambda: empty)
    with pytest.raises(InvalidInput, match="no target given"):
        targets.resolve(None)
    with pytest.raises(InvalidInput) as caught:
        targets.resolve("x")
    assert "none configured" in caught.value.message


# ---------------------------------------------------------------------------- scalar and script, on both


@pytest.mark.parametrize("target", ["lite", "pg"])
async def test_scalar(setup: Setup, target: str) -> None:
    assert await setup.targets.scalar(target, "SELECT 6 * 7") == 42
    assert await setup.targets.scalar(target, "SELECT :a + :b", {"a": 40, "b": 2}) == 42
    assert await setup.targets.scalar(target, "SELECT NULL") is None


async def test_script_on_sqlite_returns_the_rows_of_each_query(setup: Setup) -> None:
    results = await setup.targets.script(
        "lite",
        [
            "CREATE TABLE sales (id integer, amount integer, note text)",
            "INSERT INTO sales VALUES (1, 10, 'a;b'), (2, 20, '50%'), (3, 30, ':x')",
            "SELECT id, amount FROM sales ORDER BY id",
            "UPDATE sales SET amount = amount + 1 WHERE id = 2",
            "SELECT count(*) AS n, sum(amount) AS total FROM sales",
            "SELECT note FROM sales WHERE note LIKE '%\\%%' ESCAPE '\\' OR note = ':x' ORDER BY id",
        ],
    )
    assert results == [
        (["id", "amount"], [(1, 10), (2, 20), (3, 30)]),
        (["n", "total"], [(3, 61)]),
        (["note"], [("50%",), (":x",)]),
    ]
    # committed: visible to another connection
    engine = create_engine(f"sqlite:///{setup.sqlite_path}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT sum(amount) FROM sales")).scalar() == 61
    finally:
        engine.dispose()


async def test_script_on_postgresql_returns_the_rows_of_each_query(setup: Setup, pg_table: str) -> None:
    results = await setup.targets.script(
        "pg",
        [
            f"CREATE TABLE {pg_table} (id integer, load_dttm timestamp, note text)",
            f"INSERT INTO {pg_table} VALUES (1, '2024-12-01 10:00:00', '50%'), (2, '2024-12-01 11:00:00', ':x')",
            f"SELECT id, note FROM {pg_table} ORDER BY id",
            f"SELECT count(*) AS n, max(load_dttm)::text AS latest FROM {pg_table}",
        ],
    )
    assert results == [
        (["id", "note"], [(1, "50%"), (2, ":x")]),
        (["n", "latest"], [(2, "2024-12-01 11:00:00")]),
    ]
    assert await setup.targets.scalar("pg", f"SELECT count(*) FROM {pg_table}") == 2


@pytest.mark.parametrize(
    ("target", "driver_message"),
    [
        pytest.param("lite", "no such table: missing_table", id="sqlite"),
        pytest.param("pg", 'relation "missing_table" does not exist', id="postgresql"),
    ],
)
async def test_sql_error_is_a_target_error_with_the_drivers_message(
    setup: Setup, target: str, driver_message: str
) -> None:
    with pytest.raises(TargetError) as caught:
        await setup.targets.script(target, ["SELECT 1", "SELECT * FROM missing_table"])
    assert caught.value.message.startswith(f"target {target!r}: ")
    assert driver_message in caught.value.message
    assert "\n" not in caught.value.message  # the first line of the driver's message only
    with pytest.raises(TargetError) as caught:
        await setup.targets.scalar(target, "SELEC 1")
    assert "syntax error" in caught.value.message


async def test_a_failed_script_is_rolled_back_on_postgresql(setup: Setup, pg_table: str) -> None:
    await setup.targets.script("pg", [f"CREATE TABLE {pg_table} (id integer)"])
    with pytest.raises(TargetError):
        await setup.targets.script(
            "pg", [f"INSERT INTO {pg_table} VALUES (1)", f"CREATE TABLE {pg_table}_b (x int)", "SELECT 1/0"]
        )
    assert await setup.targets.scalar("pg", f"SELECT count(*) FROM {pg_table}") == 0
    assert await setup.targets.scalar("pg", f"SELECT to_regclass('{pg_table}_b') IS NULL") is True


async def test_a_failed_script_rolls_back_its_inserts_on_sqlite(setup: Setup) -> None:
    await setup.targets.script("lite", ["CREATE TABLE kept (id integer)"])
    with pytest.raises(TargetError):
        await setup.targets.script("lite", ["INSERT INTO kept VALUES (1)", "INSERT INTO kept VALUES (2)", "SELECT *"])
    assert await setup.targets.scalar("lite", "SELECT count(*) FROM kept") == 0


async def test_a_failed_script_leaves_no_ddl_behind_on_sqlite(setup: Setup) -> None:
    with pytest.raises(TargetError):
        await setup.targets.script("lite", ["CREATE TABLE half_done (id integer)", "SELECT * FROM missing_table"])
    assert await setup.targets.scalar("lite", "SELECT count(*) FROM sqlite_master WHERE name = 'half_done'") == 0


# ---------------------------------------------------------------------------- targets that do not work


async def test_a_postgresql_target_that_is_down_fails_quickly(setup: Setup) -> None:
    started = time.monotonic()
    with pytest.raises(TargetError) as caught:
        await setup.targets.scalar("down", "SELECT 1")
    assert time.monotonic() - started < DOWN_TIMEOUT
    message = caught.value.message
    assert message.startswith("target 'down': ")
    assert "connection" in message.lower() and "refused" in message.lower(), message


async def test_a_sqlite_target_that_cannot_be_opened(setup: Setup, tmp_path: Path) -> None:
    setup.reconfigure(urls={**setup.config[0].urls, "lite": f"sqlite:///{tmp_path}/no/such/dir/x.db"})
    with pytest.raises(TargetError) as caught:
        await setup.targets.scalar("lite", "SELECT 1")
    assert "unable to open database file" in caught.value.message


async def test_a_missing_driver_is_a_target_error(setup: Setup) -> None:
    setup.reconfigure(urls={**setup.config[0].urls, "odd": "nosuchdialect+nosuchdriver://u@h/db"})
    with pytest.raises(TargetError) as caught:
        await setup.targets.scalar("odd", "SELECT 1")
    assert caught.value.message.startswith("target 'odd': ")
    assert "nosuchdialect" in caught.value.message


async def test_the_documented_postgresql_url_works_with_the_postgresql_extra(
    setup: Setup, pg_server: PostgresServer
) -> None:
    setup.reconfigure(urls={**setup.config[0].urls, "plain": pg_server.url("targets_it", scheme="postgresql")})
    assert await setup.targets.scalar("plain", "SELECT 1") == 1


# ---------------------------------------------------------------------------- configuration and threads


async def test_a_changed_url_applies_to_the_next_query(setup: Setup, tmp_path: Path) -> None:
    await setup.targets.script("lite", ["CREATE TABLE which (name text)", "INSERT INTO which VALUES ('first')"])
    second = tmp_path / "second.db"
    engine = create_engine(f"sqlite:///{second}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE which (name text)"))
            conn.execute(text("INSERT INTO which VALUES ('second')"))
    finally:
        engine.dispose()
    assert await setup.targets.scalar("lite", "SELECT name FROM which") == "first"
    setup.reconfigure(urls={**setup.config[0].urls, "lite": f"sqlite:///{second}"})
    assert await setup.targets.scalar("lite", "SELECT name FROM which") == "second"


async def test_queries_run_in_worker_threads(setup: Setup) -> None:
    """A slow query does not block the event loop: other coroutines keep running meanwhile."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        await setup.targets.scalar("pg", "SELECT pg_sleep(0.5)")
    finally:
        done.set()
        await task
    assert ticks >= 10, f"the event loop ran only {ticks} times during a 0.5 s query"


async def test_concurrent_queries_on_one_target(setup: Setup) -> None:
    results = await asyncio.gather(*(setup.targets.scalar("pg", f"SELECT {i}") for i in range(8)))
    assert results == list(range(8))
