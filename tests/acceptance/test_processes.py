"""Processes, load windows, data currency, target databases and the file steps, end to end:
a real loadmgrd with real target databases (a SQLite file, and the PostgreSQL server of
tests/pg.py), driven through loadmgrctl and the JSON-RPC socket (docs/processes.md).

Runs are followed with ``start --wait`` or the ``watch`` long poll, never with sleeps.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import shlex
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.conftest import PYTHON, Daemon, make_daemon
from tests.pg import PostgresServer, free_port
from tests.support import WAIT_TIMEOUT, call

LOW = "1900-01-01 00:00:00"
HIGH = "2999-12-31 23:59:59"


# ---------------------------------------------------------------------------- helpers


def step(
    number: int,
    function: str,
    command: str,
    args: dict[str, Any] | str = "",
    *,
    capture: bool = False,
    ignore_error: bool = False,
) -> dict[str, Any]:
    return {
        "job_step": number,
        "job_step_function": function,
        "job_step_command": command,
        "job_step_args": args,
        "job_step_capture_output": capture,
        "job_step_ignore_error": ignore_error,
    }


def job_json(steps: list[dict[str, Any]]) -> str:
    return json.dumps({"steps": steps}, indent=1)


def import_rpc(d: Daemon, job: str, steps: list[dict[str, Any]]) -> None:
    call(d, "job.import", {"job": job, "file_name": f"{job}.json", "content": job_json(steps), "force": True})


def wait_finished(d: Daemon, job: str, run_id: str) -> dict[str, Any]:
    """Follow the run with the watch long poll until it ended; the job's status afterwards."""
    since = -1
    limit = time.monotonic() + WAIT_TIMEOUT
    while True:
        result = call(d, "watch", {"names": [job], "since": since, "wait": 5.0})
        row = result["runs"][0]
        if row["run_id"] == run_id and row["status"] in ("Completed", "Failed", "Stopped"):
            status: dict[str, Any] = call(d, "status", {"job": job})
            return status
        if time.monotonic() > limit:
            raise AssertionError(f"job {job} run {run_id} did not end: {call(d, 'status', {'job': job})}")
        since = result["version"]


def run_rpc(d: Daemon, job: str, steps: list[dict[str, Any]], tempargs: list[str] | None = None) -> dict[str, Any]:
    """Import ``steps`` as ``job``, start it and wait for the end; its status."""
    import_rpc(d, job, steps)
    started = call(d, "start", {"name": job, "tempargs": tempargs or []})
    result = started["results"][0]
    assert result["started"], result
    return wait_finished(d, job, result["run_id"])


def steps_of(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {s["job_step"]: s for s in status["run"]["steps"]}


def assert_step_failed(status: dict[str, Any], number: int, *fragments: str) -> str:
    assert status["status"] == "Failed", f"run not Failed: {status}"
    failing = steps_of(status)[number]
    assert failing["status"] == "Failure", failing
    message = failing["message"] or ""
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in step {number} message {message!r}"
    return message


def assert_serving(d: Daemon) -> None:
    assert d.proc is not None and d.proc.poll() is None, f"loadmgrd exited:\n{d.log()[-3000:]}"
    assert "version" in call(d, "ping")


@dataclass
class Warehouse:
    """A daemon whose default target ``dw`` is the backend under test (tables in ``schema``)."""

    backend: str
    d: Daemon
    schema: str
    url: str
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = create_engine(self.url)

    @property
    def home(self) -> Path:
        return self.d.home

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params or {})
            return [tuple(r) for r in result.fetchall()] if result.returns_rows else []

    def table(self, name: str) -> str:
        """Create ``SCHEMA.name`` (sales-like, empty) on the target; its qualified name."""
        qualified = f"{self.schema}.{name}"
        self.sql(f"DROP TABLE IF EXISTS {qualified}")
        self.sql(f"CREATE TABLE {qualified} (id integer, amount integer, load_dttm timestamp, batch_nbr varchar(40))")
        return qualified


def target_config(url: str) -> str:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere?connect_timeout=5"
    return textwrap.dedent(
        f"""
        [targets]
        dw = {url}
        down = {down}
        default_target = dw
        """
    )


def warehouse_daemon(request: pytest.FixtureRequest, database: str) -> Iterator[Warehouse]:
    """A daemon whose default target ``dw`` is on ``request.param``'s backend (PostgreSQL: the
    session's server, database ``database``, schema ``dw``; SQLite: a file, schema ``main``)."""
    d = make_daemon()
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("pg_server")
        url = server.create_database(database)
        schema = "dw"
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE SCHEMA IF NOT EXISTS dw"))
        finally:
            engine.dispose()
    else:
        url = f"sqlite:///{d.home}/dw.db"
        schema = "main"
    with d.config_file.open("a") as config:
        config.write(target_config(url))
    warehouse = Warehouse(request.param, d, schema, url)
    try:
        d.start()
        yield warehouse
    finally:
        d.stop()
        warehouse.engine.dispose()
        shutil.rmtree(d.home, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def wh(request: pytest.FixtureRequest) -> Iterator[Warehouse]:
    """One daemon per backend for the module, its default target on that backend."""
    yield from warehouse_daemon(request, "processes_at")


# ---------------------------------------------------------------------------- the worked example


# The loading program of the ingestion job: an ordinary program the job runs (run_command), told
# its batch number on the command line through %PROCESS.batch_nbr%, as an ETL script would be.
LOADER = """\
import sys
from sqlalchemy import create_engine, text

url, table, batch, day_arg = sys.argv[1:]  # the step's args come last, as key=value words
day = day_arg.removeprefix("day=")
with create_engine(url).begin() as conn:
    for n, hour in ((1, 10), (2, 11), (3, 12)):
        conn.execute(
            text(f"INSERT INTO {table} (id, amount, load_dttm, batch_nbr) VALUES (:id, :amount, :ts, :batch)"),
            {"id": n, "amount": 10 * n, "ts": f"{day} {hour}:00:00", "batch": batch},
        )
print(f"loaded 3 rows of batch {batch}")
"""


def ingestion_steps(process: str, table: str, schema: str, name: str, url: str, loader: Path) -> list[dict[str, Any]]:
    loader.write_text(LOADER)
    load = f"{shlex.quote(PYTHON)} {shlex.quote(str(loader))} {shlex.quote(url)} {table} %{process}.batch_nbr%"
    return [
        step(10, "start_process", process, capture=True),
        step(20, "run_command", load, {"day": "2024-12-01"}, capture=True),
        step(
            25,
            "run_command",
            f'echo start=%currency_start_dttm% end="$LOADMGR_CURRENCY_END_DTTM" batch=%{process}.batch_nbr%',
            capture=True,
        ),
        step(30, "log_data_currency", f"{schema} {name}", capture=True),
        step(40, "stop_process", process, capture=True),
    ]


def consumption_steps(process: str, table: str) -> list[dict[str, Any]]:
    return [
        step(10, "start_process", process, capture=True),
        step(
            20,
            "execute_sql",
            f"SELECT count(*) FROM {table} WHERE load_dttm > '{{{{ start }}}}' AND load_dttm <= '{{{{ end }}}}'",
            {"start": "%currency_start_dttm:raw%", "end": "%currency_end_dttm:raw%"},
            capture=True,
        ),
        step(30, "stop_process", process, "row_count=%step_20%", capture=True),
    ]


def start_wait(d: Daemon, *args: str) -> None:
    result = d.ctl("start", "--wait", *args)
    assert result.returncode == 0, f"start --wait {args}: {result.returncode}\n{result.stdout}{result.stderr}"


def test_ingestion_then_consumption_windows_follow_the_data_currency(wh: Warehouse, tmp_path: Path) -> None:
    d, schema = wh.d, wh.schema
    table = wh.table("sales")
    # the repository side, with loadmgrctl (docs/processes.md)
    d.ok(
        "process",
        "add",
        "--process_type",
        "ingestion",
        "--row_count_type",
        "Batch",
        "--row_count_property",
        table,
        "sales_in",
    )
    d.ok("currency", "configure", schema, "sales", "load_dttm")
    d.ok("link", "create", "sales_in", schema, "sales")
    d.ok("process", "add", "--process_type", "consumption", "sales_report")
    d.ok("link", "create", "sales_report", schema, "sales")
    ingestion = ingestion_steps("sales_in", table, schema, "sales", wh.url, tmp_path / "load_sales.py")
    (tmp_path / "sales_in.json").write_text(job_json(ingestion))
    (tmp_path / "sales_report.json").write_text(job_json(consumption_steps("sales_report", table)))
    d.ok("job", "import", "sales_in", str(tmp_path / "sales_in.json"))
    d.ok("job", "import", "sales_report", str(tmp_path / "sales_report.json"))

    # 1. ingestion, first run: low date → high date, then the window end becomes the currency
    start_wait(d, "sales_in")
    run = steps_of(call(d, "status", {"job": "sales_in"}))
    view = d.json("process", "view", "sales_in")
    first = view["latest_log"]
    batch = first["batch_nbr"]
    process_key = view["process"]["process_key"]
    assert re.fullmatch(rf"{process_key}\d{{12}}", batch), batch
    assert run[10]["output"] == LOW
    assert run[20]["output"] == f"loaded 3 rows of batch {batch}"  # the program got its batch number
    assert run[25]["output"] == f"start={LOW} end={HIGH} batch={batch}"
    assert run[30]["output"] == "2024-12-01 12:00:00"
    assert run[40]["output"] == "2024-12-01 12:00:00"
    assert first["status"] == "Complete"
    assert first["load_strategy"] == "incremental"
    assert (first["currency_start_dttm"], first["currency_end_dttm"]) == (LOW, "2024-12-01 12:00:00")
    assert first["row_count"] == 3 == wh.sql(f"SELECT count(*) FROM {table} WHERE batch_nbr = :b", {"b": batch})[0][0]
    assert first["end_ts"] is not None and first["duration"] is not None and first["duration"] >= 0
    assert first["job_name"] == "sales_in" and first["run_id"]
    assert view["linked_tables"] == [f"{schema}.sales"]
    currency = d.json("currency", "view", schema, "sales")
    assert currency["current_currency_dttm"] == "2024-12-01 12:00:00"
    assert currency["current_currency_date"] == "2024-12-01"

    # 2. consumption: reads exactly what was loaded (window end = that currency)
    start_wait(d, "sales_report")
    report = d.json("process", "view", "sales_report")["latest_log"]
    assert (report["currency_start_dttm"], report["currency_end_dttm"]) == (LOW, currency["current_currency_dttm"])
    assert report["status"] == "Complete"
    assert report["row_count"] == 3

    # 3. the next ingestion run starts where the last complete one ended
    start_wait(d, "--tempargs", "day:2024-12-02", "sales_in")
    run = steps_of(call(d, "status", {"job": "sales_in"}))
    second = d.json("process", "view", "sales_in")["latest_log"]
    assert run[10]["output"] == first["currency_end_dttm"]
    assert run[25]["output"] == f"start={first['currency_end_dttm']} end={HIGH} batch={second['batch_nbr']}"
    assert (second["currency_start_dttm"], second["currency_end_dttm"]) == (
        "2024-12-01 12:00:00",
        "2024-12-02 12:00:00",
    )
    assert second["status"] == "Complete"
    by_batch = wh.sql(f"SELECT count(*) FROM {table} WHERE batch_nbr = :b", {"b": second["batch_nbr"]})[0][0]
    assert second["row_count"] == by_batch

    # 4. and so does the next consumption run
    start_wait(d, "sales_report")
    report = call(d, "process.view", {"name": "sales_report"})["latest_log"]
    assert (report["currency_start_dttm"], report["currency_end_dttm"]) == (
        "2024-12-01 12:00:00",
        "2024-12-02 12:00:00",
    )
    assert report["row_count"] == 3

    # 5. history shows the process log of the job's processes
    history = call(d, "history", {"job": "sales_in", "limit": 10})
    entries = history["process_log"]
    assert [e["process_name"] for e in entries] == ["sales_in", "sales_in"]
    assert [(e["currency_start_dttm"], e["currency_end_dttm"]) for e in entries] == [
        ("2024-12-01 12:00:00", "2024-12-02 12:00:00"),
        (LOW, "2024-12-01 12:00:00"),
    ]
    assert all(e["status"] == "Complete" and e["job_name"] == "sales_in" for e in entries)
    printed = subprocess.run(
        [PYTHON, "-m", "loadmgrctl", "--socket", str(d.socket), "history", "sales_in"],
        env=d.env(COLUMNS="300"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Process log of sales_in" in printed
    assert batch in printed and second["batch_nbr"] in printed
    assert "2024-12-02 12:00:00" in printed
    as_json = d.json("history", "sales_in")  # scripts get the process log too
    assert [e["batch_nbr"] for e in as_json["process_log"]] == [e["batch_nbr"] for e in entries]
    assert len(as_json["runs"]) == 2


def test_the_currency_is_logged_only_when_it_changes(wh: Warehouse) -> None:
    d, schema = wh.d, wh.schema
    table = wh.table("cur_changes")
    wh.sql(f"INSERT INTO {table} (id, load_dttm) VALUES (1, '2024-11-30 23:00:00')")
    call(
        d,
        "currency.configure",
        {"schema": schema, "table": "cur_changes", "column": "load_dttm", "currency_date_offset": True},
    )
    log_step = [step(10, "log_data_currency", f"{schema} cur_changes", capture=True)]
    status = run_rpc(d, "cur_changes", log_step)
    assert status["status"] == "Completed", status
    assert steps_of(status)[10]["output"] == "2024-11-30 23:00:00"
    view = call(d, "currency.view", {"schema": schema, "table": "cur_changes"})
    assert (view["current_currency_dttm"], view["current_currency_date"]) == ("2024-11-30 23:00:00", "2024-11-29")
    status = run_rpc(d, "cur_changes", log_step)  # same value: not logged again
    assert status["status"] == "Completed"
    log_text = Path(status["run"]["log_file"]).read_text()
    assert "unchanged: not logged" in log_text
    # currency_date given: no query at all
    status = run_rpc(
        d, "cur_changes", [step(10, "log_data_currency", f"{schema} cur_changes", "currency_date=2024-12-24")]
    )
    assert status["status"] == "Completed"
    view = call(d, "currency.view", {"schema": schema, "table": "cur_changes"})
    assert (view["current_currency_dttm"], view["current_currency_date"]) == ("2024-12-24 00:00:00", "2024-12-23")


def test_manual_window_and_consumption_currency_date(wh: Warehouse) -> None:
    """manual: the given dates as they are; a date-flag consumption process ends at the currency DATE."""
    d, schema = wh.d, wh.schema
    table = wh.table("by_day")
    wh.sql(f"INSERT INTO {table} (id, load_dttm) VALUES (1, '2024-10-05 17:45:00')")
    call(d, "currency.configure", {"schema": schema, "table": "by_day", "column": "load_dttm"})
    call(d, "process.add", {"name": "by_day_report", "process_type": "consumption", "currency_date_flag": True})
    call(d, "link.create", {"process": "by_day_report", "schema": schema, "table": "by_day"})
    call(d, "process.add", {"name": "by_day_manual", "process_type": "consumption"})
    call(d, "link.create", {"process": "by_day_manual", "schema": schema, "table": "by_day"})
    assert run_rpc(d, "by_day_log", [step(10, "log_data_currency", f"{schema} by_day")])["status"] == "Completed"

    status = run_rpc(
        d, "by_day_report", [step(10, "start_process", "by_day_report"), step(20, "stop_process", "by_day_report")]
    )
    assert status["status"] == "Completed", status
    latest = call(d, "process.view", {"name": "by_day_report"})["latest_log"]
    assert (latest["currency_start_dttm"], latest["currency_end_dttm"]) == (LOW, "2024-10-05 00:00:00")

    manual = [
        step(10, "start_process", "by_day_manual", "load_strategy=manual", capture=True),
        step(20, "run_command", 'echo "$LOADMGR_CURRENCY_START_DTTM|$LOADMGR_CURRENCY_END_DTTM"', capture=True),
        step(30, "stop_process", "by_day_manual", capture=True),
    ]
    status = run_rpc(d, "by_day_manual", manual, ["start_date:2024-10-01 06:30:00", "end_date:2024-10-02"])
    assert status["status"] == "Completed", status
    outputs = {n: s["output"] for n, s in steps_of(status).items()}
    assert outputs[10] == "2024-10-01 06:30:00"
    assert outputs[20] == "2024-10-01 06:30:00|2024-10-02 00:00:00"
    # consumption with manual: stop_process sets the end to the linked table's currency
    assert outputs[30] == "2024-10-05 17:45:00"
    latest = call(d, "process.view", {"name": "by_day_manual"})["latest_log"]
    assert (latest["load_strategy"], latest["currency_start_dttm"], latest["currency_end_dttm"]) == (
        "manual",
        "2024-10-01 06:30:00",
        "2024-10-05 17:45:00",
    )


def test_consumption_window_warnings(wh: Warehouse) -> None:
    """A linked table without a currency is left out of the window end with a warning; a window
    that ends before it starts (the currency went back) is opened with a warning."""
    d, schema = wh.d, wh.schema
    loaded, empty = wh.table("warn_loaded"), wh.table("warn_empty")
    wh.sql(f"INSERT INTO {loaded} (id, load_dttm) VALUES (1, '2024-10-05 17:45:00')")
    for name in ("warn_loaded", "warn_empty"):
        call(d, "currency.configure", {"schema": schema, "table": name, "column": "load_dttm"})
    call(d, "process.add", {"name": "warn_report", "process_type": "consumption"})
    for name in ("warn_loaded", "warn_empty"):
        call(d, "link.create", {"process": "warn_report", "schema": schema, "table": name})
    assert run_rpc(d, "warn_log", [step(10, "log_data_currency", f"{schema} warn_loaded")])["status"] == "Completed"
    report = [step(10, "start_process", "warn_report"), step(20, "stop_process", "warn_report")]

    assert run_rpc(d, "warn_report", report)["status"] == "Completed"
    text = d.ok("logs", "warn_report")
    assert f"without a data currency yet, left out of the window end: {empty}" in text, text
    assert "ends before it starts" not in text

    # The loaded table's currency goes back (a reload of older data): the next window is empty.
    back = [step(10, "log_data_currency", f"{schema} warn_loaded", "currency_date=2024-10-01")]
    assert run_rpc(d, "warn_log", back)["status"] == "Completed"
    assert run_rpc(d, "warn_report", report)["status"] == "Completed"
    text = d.ok("logs", "warn_report")
    assert "the window ends before it starts (2024-10-05 17:45:00 → 2024-10-01 00:00:00)" in text, text


def test_two_runs_of_a_process_never_share_a_batch_number(wh: Warehouse) -> None:
    d = wh.d
    table = wh.table("twice")
    call(d, "process.add", {"name": "twice_in", "row_count_type": "Batch", "row_count_property": table})
    call(d, "currency.configure", {"schema": wh.schema, "table": "twice", "column": "load_dttm"})
    call(d, "link.create", {"process": "twice_in", "schema": wh.schema, "table": "twice"})
    once = [
        step(10, "start_process", "twice_in"),
        step(
            20,
            "execute_sql",
            f"INSERT INTO {table} (id, load_dttm, batch_nbr) VALUES (1, '2024-01-01 00:00:00', '{{{{ b }}}}')",
            {"b": "%twice_in.batch_nbr%"},
        ),
        step(30, "log_data_currency", f"{wh.schema} twice"),
        step(40, "stop_process", "twice_in"),
    ]
    steps = once + [{**s, "job_step": s["job_step"] + 100} for s in once]
    for _attempt in range(5):  # the bug shows only when both start in one second: nearly always
        status = run_rpc(d, "twice", steps)
        assert status["status"] == "Completed", status
        entries = call(d, "history", {"job": "twice", "limit": 2})["process_log"]
        if entries[0]["start_ts"][:19] == entries[1]["start_ts"][:19]:
            break
    else:
        pytest.skip("the two process runs never started within one second")
    assert entries[0]["batch_nbr"] != entries[1]["batch_nbr"]
    assert [e["row_count"] for e in entries] == [1, 1]


# ---------------------------------------------------------------------------- bad input


def bad_cases(schema: str) -> dict[str, tuple[list[dict[str, Any]], list[str], int, list[str]]]:
    """name → (steps, tempargs, failing step, fragments of its message)."""
    return {
        "unknown_process": (
            [step(10, "start_process", "no_such_process")],
            [],
            10,
            ["no process named 'no_such_process'"],
        ),
        "not_linked": (
            [step(10, "start_process", "bad_unlinked")],
            [],
            10,
            ["bad_unlinked", "no linked table", "loadmgrctl link create bad_unlinked"],
        ),
        "no_currency_yet": (
            [step(10, "start_process", "bad_nocur")],
            [],
            10,
            ["bad_nocur", "no data currency logged yet"],
        ),
        "empty_table": (
            [step(10, "log_data_currency", f"{schema} bad_empty")],
            [],
            10,
            [f"no data currency for {schema}.bad_empty", "empty table"],
        ),
        "currency_not_configured": (
            [step(10, "log_data_currency", f"{schema} never_configured")],
            [],
            10,
            [f"no data currency configured for {schema}.never_configured"],
        ),
        "manual_bad_date": (
            [step(10, "start_process", "bad_manual", "load_strategy=manual")],
            ["start_date:notadate"],
            10,
            ["start_date 'notadate' is not a date"],
        ),
        "manual_no_dates": (
            [step(10, "start_process", "bad_manual", "load_strategy=manual")],
            [],
            10,
            ["load_strategy manual needs start_date, end_date or both"],
        ),
        "invalid_strategy": (
            [step(10, "start_process", "bad_manual", "load_strategy=weekly")],
            [],
            10,
            ["load_strategy 'weekly' is not one of"],
        ),
        "stop_status_bogus": (
            [step(10, "start_process", "bad_manual"), step(20, "stop_process", "bad_manual", "status=Bogus")],
            [],
            20,
            ["status 'Bogus' is not Complete, Running or Failed"],
        ),
        "stop_not_linked": (
            [step(10, "start_process", "bad_manual"), step(20, "stop_process", "bad_manual")],
            [],
            20,
            ["'bad_manual' is not linked to a table", "loadmgrctl link create bad_manual"],
        ),
        "target_unknown": (
            [step(10, "execute_sql", "SELECT 1", "target=nosuch")],
            [],
            10,
            ["target 'nosuch' is not in [targets] (down, dw)"],
        ),
        "target_down": (
            [step(10, "execute_sql", "SELECT 1", "target=down")],
            [],
            10,
            ["target 'down': ", "refused"],
        ),
        "sql_error": (
            [step(10, "execute_sql", f"SELECT 1; SELECT * FROM {schema}.no_such_table")],
            [],
            10,
            ["target 'dw': "],
        ),
        "jinja_undefined": (
            [step(10, "execute_sql", "SELECT {{ nope }}", {"yes": "1"})],
            [],
            10,
            ["SQL template error", "'nope' is undefined"],
        ),
        "file_count_without_start": (
            [step(10, "file_record_count", "bad_never_started /tmp *.csv")],
            [],
            10,
            ["'bad_never_started' has no running log entry", "start_process bad_never_started"],
        ),
    }


SQL_ERRORS = {"sqlite": "no such table: main.no_such_table", "postgresql": 'relation "dw.no_such_table" does not exist'}


@pytest.fixture(scope="module")
def bad_setup(wh: Warehouse) -> Warehouse:
    d, schema = wh.d, wh.schema
    call(d, "process.add", {"name": "bad_unlinked", "process_type": "consumption"})
    call(d, "process.add", {"name": "bad_nocur", "process_type": "consumption"})
    call(d, "currency.configure", {"schema": schema, "table": "bad_nocur_t", "column": "load_dttm"})
    call(d, "link.create", {"process": "bad_nocur", "schema": schema, "table": "bad_nocur_t"})
    wh.table("bad_empty")
    call(d, "currency.configure", {"schema": schema, "table": "bad_empty", "column": "load_dttm"})
    call(d, "process.add", {"name": "bad_manual", "process_type": "ingestion"})
    call(d, "process.add", {"name": "bad_never_started", "process_type": "ingestion"})
    return wh


@pytest.mark.parametrize("case", list(bad_cases("main")))
def test_bad_input_fails_the_step_with_a_clear_message(bad_setup: Warehouse, case: str) -> None:
    wh = bad_setup
    steps, tempargs, failing, fragments = bad_cases(wh.schema)[case]
    if case == "sql_error":
        fragments = [*fragments, SQL_ERRORS[wh.backend]]
    job = f"bad_{case}"
    if case == "manual_bad_date":  # this one through the real client: start --wait --tempargs, status --json
        (wh.home / f"{job}.json").write_text(job_json(steps))
        wh.d.ok("job", "import", "--force", job, str(wh.home / f"{job}.json"))
        result = wh.d.ctl("start", "--wait", *(f"--tempargs={t}" for t in tempargs), job)
        assert result.returncode == 1, f"{result.returncode}: {result.stdout}{result.stderr}"
        status = wh.d.json("status", job)
    else:
        status = run_rpc(wh.d, job, steps, tempargs)
    assert_step_failed(status, failing, *fragments)
    if case == "target_down":
        assert status["run"]["duration"] < 15, "a target that is down must fail quickly"
    assert_serving(wh.d)


# ---------------------------------------------------------------------------- files

FILES = {
    "sales_20241201.csv": (b"a,1\nb,2\nc,3\n", lambda b: b),
    "sales_20241202.csv.gz": (b"d,4\ne,5\nf,6\ng,7\n", gzip.compress),
    "sales_20241203.csv.bz2": (b"h,8\ni,9\nj,10\nk,11\nl,12\n", bz2.compress),
    "sales_20241204.csv.xz": (b"m,13\nn,14", lzma.compress),  # no newline at the end: still 2 records
}
RECORDS = {"sales_20241201.csv": 3, "sales_20241202.csv.gz": 4, "sales_20241203.csv.bz2": 5, "sales_20241204.csv.xz": 2}


def make_stage(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (content, pack) in FILES.items():
        (directory / name).write_bytes(pack(content))
    (directory / "other_20241201.csv").write_bytes(b"not,matched\n")
    (directory / "sales_dir.csv").mkdir()  # a directory matching the mask is not a file
    return directory


def file_job(process: str, stage: Path, mask: str, done: Path) -> list[dict[str, Any]]:
    return [
        step(10, "start_process", process),
        step(20, "file_record_count", f"{process} {stage} {mask}", "date_format=yyyyMMdd file_type=csv", capture=True),
        step(30, "create_done_file", f"{process} {done}", capture=True),
    ]


def test_file_record_count_and_done_file(daemon: Daemon, tmp_path: Path) -> None:
    call(daemon, "process.add", {"name": "files_in"})
    stage = make_stage(tmp_path / "stage")
    done = tmp_path / "out" / "sales.done"
    status = run_rpc(daemon, "files_job", file_job("files_in", stage, "sales_*.csv*", done))
    assert status["status"] == "Completed", status
    outputs = {n: s["output"] for n, s in steps_of(status).items()}
    assert outputs[20] == str(sum(RECORDS.values())) == "14"
    assert outputs[30] == "4"
    log_text = Path(status["run"]["log_file"]).read_text()
    for name, records in RECORDS.items():
        assert f"{stage / name}: {records} records" in log_text
    assert "other_20241201.csv" not in log_text
    assert done.read_text().splitlines() == [
        f"{stage / name},{records},2024-12-0{i}" for i, (name, records) in enumerate(RECORDS.items(), start=1)
    ]
    assert not list(done.parent.glob(".*.tmp"))  # written through a temporary file, replaced atomically


def test_file_record_count_without_matching_files(daemon: Daemon, tmp_path: Path) -> None:
    call(daemon, "process.add", {"name": "files_none"})
    stage = make_stage(tmp_path / "stage")
    done = tmp_path / "none.done"
    done.write_text("stale,1,\n")
    status = run_rpc(daemon, "files_none_job", file_job("files_none", stage, "nomatch_*.csv", done))
    assert status["status"] == "Completed", status
    outputs = {n: s["output"] for n, s in steps_of(status).items()}
    assert (outputs[20], outputs[30]) == ("0", "0")
    assert done.read_text() == ""


def test_file_record_count_of_a_corrupt_file_fails_naming_it(daemon: Daemon, tmp_path: Path) -> None:
    call(daemon, "process.add", {"name": "files_bad"})
    stage = make_stage(tmp_path / "stage")
    corrupt = stage / "sales_20241205.csv.gz"
    corrupt.write_bytes(gzip.compress(b"x\n" * 1000)[:30])  # truncated
    status = run_rpc(daemon, "files_bad_job", file_job("files_bad", stage, "sales_*.csv*", tmp_path / "bad.done"))
    assert_step_failed(status, 20, f"cannot read {corrupt}")
    assert not (tmp_path / "bad.done").exists()
    assert_serving(daemon)


# ---------------------------------------------------------------------------- hdfs_file_stage

FAKE_HDFS = """#!/bin/sh
# A stand-in for the hdfs client: one line per call, the arguments separated by tabs.
if [ -e "{fail_flag}" ]; then
    echo "hdfs: simulated failure" >&2
    exit 1
fi
(IFS='\t'; printf '%s\\n' "$*") >> "{calls}"
"""


@pytest.fixture
def hdfs_daemon(
    fresh_daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Daemon, Path, Path]]:
    """A daemon whose PATH starts with a directory holding a fake ``hdfs``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls, fail_flag = tmp_path / "hdfs.calls", tmp_path / "hdfs.fail"
    hdfs = bindir / "hdfs"
    hdfs.write_text(FAKE_HDFS.format(calls=calls, fail_flag=fail_flag))
    hdfs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    fresh_daemon.start()  # Daemon.env() copies os.environ: the daemon (and its steps) get this PATH
    yield fresh_daemon, calls, fail_flag


def test_hdfs_file_stage_runs_the_hdfs_commands(hdfs_daemon: tuple[Daemon, Path, Path], tmp_path: Path) -> None:
    d, calls, fail_flag = hdfs_daemon
    stage = tmp_path / "stage"
    stage.mkdir()
    for name in ("b.csv", "a.csv", "c.csv", "notes.txt"):
        (stage / name).write_text("x\n")
    (stage / "d.csv").mkdir()
    status = run_rpc(d, "hdfs_job", [step(10, "hdfs_file_stage", f"{stage} *.csv /data/in", capture=True)])
    assert status["status"] == "Completed", status
    assert steps_of(status)[10]["output"] == "3"
    assert calls.read_text().splitlines() == [
        "dfs\t-mkdir\t-p\t/data/in",
        "dfs\t-rm\t-r\t-f\t-skipTrash\t/data/in/*",
        f"dfs\t-put\t-f\t{stage}/a.csv\t{stage}/b.csv\t{stage}/c.csv\t/data/in",
    ]

    # nothing to stage: the directory is still emptied, nothing is put
    calls.unlink()
    status = run_rpc(d, "hdfs_none", [step(10, "hdfs_file_stage", f"{stage} *.parquet /data/in/", capture=True)])
    assert status["status"] == "Completed", status
    assert steps_of(status)[10]["output"] == "0"
    assert calls.read_text().splitlines() == ["dfs\t-mkdir\t-p\t/data/in", "dfs\t-rm\t-r\t-f\t-skipTrash\t/data/in/*"]

    # a failing hdfs fails the step, its output in the run log
    calls.unlink()
    fail_flag.touch()
    status = run_rpc(d, "hdfs_fail", [step(10, "hdfs_file_stage", f"{stage} *.csv /data/in")])
    assert_step_failed(status, 10, "dfs -mkdir -p", "exited with 1")
    assert "hdfs: simulated failure" in Path(status["run"]["log_file"]).read_text()
    assert not calls.exists()
    assert_serving(d)


def test_hdfs_file_stage_without_hdfs_on_path(daemon: Daemon, tmp_path: Path) -> None:
    if shutil.which("hdfs") is not None:
        pytest.skip("a real hdfs is on PATH here")
    status = run_rpc(daemon, "hdfs_missing", [step(10, "hdfs_file_stage", f"{tmp_path} *.csv /data/in")])
    assert_step_failed(status, 10, "the hdfs command is not on PATH")
