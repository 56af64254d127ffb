"""docs/processes.md's worked example, run as the document writes it: its configuration, its shell
blocks (through the real loadmgrctl) and its job files, on SQLite as written and on PostgreSQL
with the replacements its table gives. If the document drifts from the product, this fails."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PYTHON, Daemon, make_daemon
from tests.pg import PostgresServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "processes.md"
EXAMPLE_DIR = "/tmp/lm-example"
DOC_PG_URL = "postgresql://etl@dbhost/warehouse"
LOW = "1900-01-01 00:00:00"


@dataclass
class Example:
    config: str
    shell: list[str]  # the sh blocks, in order
    files: dict[str, str]  # job file name → its text
    replacements: list[tuple[str, str]]  # (SQLite text, PostgreSQL text)


def read_example() -> Example:
    doc = DOC.read_text()
    start = doc.index("## Worked example")
    section = doc[start : doc.index("\n## ", start + 1)]
    config = ""
    shell: list[str] = []
    files: dict[str, str] = {}
    for match in re.finditer(r"(?:`([^`\n]+)`[^\n]*\n\n)?```(\w+)\n(.*?)```", section, re.S):
        caption, language, body = match.groups()
        if language == "ini":
            config = body
        elif language == "sh":
            shell.append(body)
        elif language == "json":
            assert caption and caption.endswith(".json"), f"a job file block without its file name: {body[:80]}"
            files[caption] = body
    replacements = re.findall(r"^\| [^|`]+ \| `([^`]+)` \| `([^`]+)` \|$", section, re.M)
    return Example(config, shell, files, replacements)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(backend name, the URL the document's PostgreSQL URL stands for)."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("pg_server")
        url = server.create_database("worked_example")
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA IF EXISTS dw CASCADE"))
                conn.execute(text("CREATE SCHEMA dw"))  # the document's prerequisite
        finally:
            engine.dispose()
        # The daemon, its steps (psql) and the driver all find the server through libpq's variables,
        # so one URL without a host serves the configuration and the loading step's command line.
        monkeypatch.setenv("PGHOST", str(server.sockdir))
        monkeypatch.setenv("PGPORT", str(server.port))
        yield request.param, "postgresql://postgres@/worked_example"
    else:
        yield request.param, ""


def run_shell(d: Daemon, script: str) -> str:
    client = f"{PYTHON} -m loadmgrctl --socket {d.socket}"
    prelude = f'set -euo pipefail\nloadmgrctl() {{ {client} "$@"; }}\n'
    result = subprocess.run(
        ["bash", "-c", prelude + script], env=d.env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"the document's block failed:\n{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def test_the_worked_example_runs_as_written(backend: tuple[str, str], tmp_path: Path) -> None:
    name, pg_url = backend
    example = read_example()
    assert (
        example.config
        and len(example.shell) == 3
        and set(example.files)
        == {
            f"{EXAMPLE_DIR}/sales_in.json",
            f"{EXAMPLE_DIR}/sales_report.json",
        }
    )
    assert len(example.replacements) == 4, example.replacements
    where = tmp_path / "ex"

    def adapt(block: str) -> str:
        if name == "postgresql":
            for sqlite_text, pg_text in example.replacements:
                block = block.replace(sqlite_text, pg_text)
            block = block.replace(DOC_PG_URL, pg_url)
        return block.replace(EXAMPLE_DIR, str(where))

    d = make_daemon(adapt(example.config))
    try:
        d.start()
        loaders, repository, runs = (adapt(block) for block in example.shell)
        run_shell(d, loaders)
        run_shell(d, repository)
        for file_name, body in example.files.items():
            Path(adapt(file_name)).write_text(adapt(body))
        run_shell(d, runs)

        schema = "dw" if name == "postgresql" else "main"
        currency = d.json("currency", "view", schema, "sales")["current_currency_dttm"]
        log = d.json("history", "sales_in")["process_log"]
        assert [e["status"] for e in log] == ["Complete", "Complete"]
        second, first = log  # newest first
        assert first["currency_start_dttm"] == LOW
        assert second["currency_start_dttm"] == first["currency_end_dttm"]  # where the first ended
        assert second["currency_end_dttm"] == currency  # the table's currency after the second load
        assert first["row_count"] == second["row_count"] == 3  # Batch: this batch's rows only
        # The report ran between the two loads: its window ends at the currency the first one logged.
        report = d.json("process", "view", "sales_report")["latest_log"]
        assert (report["currency_start_dttm"], report["currency_end_dttm"], report["status"]) == (
            LOW,
            first["currency_end_dttm"],
            "Complete",
        )
        assert report["row_count"] == 3
        runs_of_in = d.json("history", "sales_in")["runs"]
        loaded = [r for run in runs_of_in for r in run["steps"] if r["job_step"] == 20]
        assert sorted(s["output"] or "" for s in loaded) == sorted(
            [f"loaded 3 rows of batch {e['batch_nbr']}" for e in log] if name == "sqlite" else ["", ""]
        )
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
