"""The data step functions: processes and load windows, data currency, SQL, and files.

``start_process`` / ``stop_process`` (SPEC §8), ``log_data_currency`` (§9), ``execute_sql``,
``file_record_count``, ``create_done_file`` and ``hdfs_file_stage`` (§6). Target databases are
reached through ``loadmgrd.targets`` (worker threads); file work runs in threads too.
"""

from __future__ import annotations

import asyncio
import bz2
import csv
import glob
import gzip
import io
import lzma
import os
import re
import shutil
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loadmgrd.errors import LoadmgrError
from loadmgrd.states import ProcessLogStatus, ProcessType, RowCountType
from loadmgrd.steps import StepContext, StepResult
from loadmgrd.timefmt import from_ts, now_ts, stamp
from loadmgrd.windows import Currency, ProcessSettings, compute_window, format_moment, parse_moment

if TYPE_CHECKING:
    from loadmgrd.engine import Engine

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
_JAVA_TOKENS = (
    ("yyyy", "%Y", r"\d{4}"),
    ("yy", "%y", r"\d{2}"),
    ("MM", "%m", r"\d{2}"),
    ("dd", "%d", r"\d{2}"),
    ("HH", "%H", r"\d{2}"),
    ("mm", "%M", r"\d{2}"),
    ("ss", "%S", r"\d{2}"),
)


class StepFailure(Exception):
    """Ends a data step with a failure message (the step's result, not a daemon error)."""


def _engine(ctx: StepContext) -> Engine:
    engine: Engine = ctx.services
    return engine


def _words(ctx: StepContext, count: int, usage: str) -> list[str]:
    words = ctx.command.split()
    if len(words) != count:
        raise StepFailure(f"the command must be {usage}, not {ctx.command!r}")
    return words


def _process_vars(ctx: StepContext, name: str) -> dict[str, Any]:
    processes: dict[str, Any] = ctx.variables.setdefault("processes", {})
    entry: dict[str, Any] = processes.setdefault(name, {})
    return entry


def guarded(function: Callable[[StepContext], Any]) -> Callable[[StepContext], Any]:
    """Turn our own errors into a failed step with the message (the daemon is never affected)."""

    async def run(ctx: StepContext) -> StepResult:
        try:
            result: StepResult = await function(ctx)
        except StepFailure as exc:
            return StepResult(1, message=str(exc))
        except LoadmgrError as exc:
            return StepResult(1, message=exc.message)
        return result

    run.__name__ = function.__name__
    run.__doc__ = function.__doc__
    return run


# ---------------------------------------------------------------------------- processes


@guarded
async def start_process(ctx: StepContext) -> StepResult:
    """Open a process-log entry with its load window; sets currency_start_dttm/currency_end_dttm."""
    engine = _engine(ctx)
    (name,) = _words(ctx, 1, "a process name")
    process = await engine.repo.get_process(name)
    settings = ProcessSettings(
        name=name,
        process_type=process["process_type"],
        currency_date_flag=bool(process["currency_date_flag"]),
        currency_start_offset=process["currency_start_offset"],
        currency_end_offset=process["currency_end_offset"],
    )
    last_end = await engine.repo.last_complete_window_end(process["process_key"])
    linked_rows = await engine.repo.linked_currencies(process["process_key"])
    linked = None
    if linked_rows:
        linked = [
            Currency(
                f"{r['table_schema']}.{r['table_name']}",
                parse_moment(r["currency_dttm"], "currency"),
                parse_moment(r["currency_date"], "currency date").date(),
            )
            for r in linked_rows
            if r["currency_dttm"]
        ]
    strategy = ctx.args.get("load_strategy", "incremental") or "incremental"
    now = datetime.now()
    window = compute_window(
        settings,
        strategy,
        start_date=ctx.args.get("start_date") or None,
        end_date=ctx.args.get("end_date") or None,
        last_complete_end=parse_moment(last_end, "window end") if last_end else None,
        linked=linked,
        now=now,
    )
    batch = f"{process['process_key']}{stamp(now.astimezone())}"
    start, end = format_moment(window.start), format_moment(window.end)
    log_key, batch = await engine.repo.open_process_log(
        process["process_key"], batch, ctx.run_id, ctx.job, strategy.lower(), start, end
    )
    ctx.variables["currency_start_dttm"] = start
    ctx.variables["currency_end_dttm"] = end
    _process_vars(ctx, name).update(
        batch_nbr=batch,
        currency_start_dttm=start,
        currency_end_dttm=end,
        load_strategy=strategy.lower(),
        status=ProcessLogStatus.RUNNING.value,
        process_log_key=log_key,
    )
    ctx.log.write(f"process {name}: batch {batch}, {strategy.lower()} window {start} → {end}", step=ctx.job_step)
    unlogged = [f"{r['table_schema']}.{r['table_name']}" for r in linked_rows if not r["currency_dttm"]]
    if unlogged and process["process_type"] == ProcessType.CONSUMPTION:
        ctx.log.write(
            f"process {name}: linked table(s) without a data currency yet, left out of the window end: "
            + ", ".join(unlogged),
            step=ctx.job_step,
            level="WARNING",
        )
    if window.end < window.start:
        ctx.log.write(
            f"process {name}: the window ends before it starts ({start} → {end}): nothing new to load or read",
            step=ctx.job_step,
            level="WARNING",
        )
    return StepResult(0, output=start, variables_changed=True)


@guarded
async def stop_process(ctx: StepContext) -> StepResult:
    """Close the process's running log entry: status, end, duration, rows; output = window end."""
    engine = _engine(ctx)
    (name,) = _words(ctx, 1, "a process name")
    process = await engine.repo.get_process(name)
    latest = await engine.repo.latest_process_log(name)
    if latest is None or latest["status"] != ProcessLogStatus.RUNNING:
        state = latest["status"] if latest else "no log entry"
        ctx.log.write(f"process {name}: nothing to stop ({state})", step=ctx.job_step, level="WARNING")
        return StepResult(0, output="", message=f"process {name} was not running")
    action = ctx.args.get("action", "log").lower()
    if action != "log":
        raise StepFailure(f"action {action!r} is not supported (only log)")
    status = ctx.args.get("status", ProcessLogStatus.COMPLETE.value).capitalize()
    if status not in {s.value for s in ProcessLogStatus}:
        raise StepFailure(f"status {ctx.args['status']!r} is not Complete, Running or Failed")
    end = latest["currency_end_dttm"]
    if process["process_type"] == ProcessType.INGESTION or latest["load_strategy"] == "manual":
        links = await engine.repo.linked_currencies(process["process_key"])
        if not links:
            raise StepFailure(
                f"process {name!r} is not linked to a table, so its window end cannot be set "
                f"(loadmgrctl link create {name} SCHEMA TABLE)"
            )
        first = links[0]
        if not first["currency_dttm"]:
            raise StepFailure(f"{first['table_schema']}.{first['table_name']} has no data currency logged yet")
        end = first["currency_date"] if process["currency_date_flag"] else first["currency_dttm"]
        end = format_moment(parse_moment(end, "currency"))
    rows = await _row_count(ctx, process, latest)
    started = from_ts(latest["start_ts"])
    ended = now_ts()
    duration = round((from_ts(ended) - started).total_seconds(), 3)
    await engine.repo.close_process_log(
        latest["process_log_key"],
        status=status,
        end_ts=None if status == "Running" else ended,
        duration=duration,
        row_count=rows,
        currency_end_dttm=end,
    )
    _process_vars(ctx, name).update(status=status, currency_end_dttm=end, row_count=rows)
    ctx.log.write(
        f"process {name}: batch {latest['batch_nbr']} {status}, {rows} rows, window end {end}", step=ctx.job_step
    )
    return StepResult(0, output=end, variables_changed=True)


async def _row_count(ctx: StepContext, process: dict[str, Any], latest: dict[str, Any]) -> int | None:
    given = ctx.args.get("row_count", "").strip()
    if given:
        if not given.isdigit():
            raise StepFailure(f"row_count {given!r} is not a whole number")
        return int(given)
    table = process["row_count_property"]
    if not table:
        return None
    if not _DOTTED.match(table):
        raise StepFailure(f"row_count_property {table!r} is not a table name (schema.table)")
    targets = _engine(ctx).databases
    target = targets.resolve(ctx.args.get("target"))
    if process["row_count_type"] == RowCountType.BATCH:
        count = await targets.scalar(
            target, f"SELECT count(*) FROM {table} WHERE batch_nbr = :batch", {"batch": latest["batch_nbr"]}
        )
    else:
        count = await targets.scalar(target, f"SELECT count(*) FROM {table}")
    return int(count or 0)


# ---------------------------------------------------------------------------- data currency


@guarded
async def log_data_currency(ctx: StepContext) -> StepResult:
    """Log a table's data currency (currency_date arg, the query override, or max(COLUMN))."""
    engine = _engine(ctx)
    schema, table = _words(ctx, 2, "SCHEMA TABLE")
    currency = await engine.repo.get_currency(schema, table)
    if ctx.args.get("currency_date"):
        moment = parse_moment(ctx.args["currency_date"], "currency_date")
    else:
        target = engine.databases.resolve(ctx.args.get("target"))
        sql = currency["currency_dttm_query"] or f"SELECT max({currency['date_column']}) FROM {schema}.{table}"
        value = await engine.databases.scalar(target, sql)
        if value is None:
            raise StepFailure(f"no data currency for {schema}.{table}: the query returned no value (empty table?)")
        moment = parse_moment(value, f"the currency of {schema}.{table}")
    day = moment.date() - timedelta(days=1) if currency["currency_date_offset"] else moment.date()
    dttm = format_moment(moment)
    added = await engine.repo.log_currency(currency["currency_key"], dttm, day.isoformat(), ctx.run_id)
    ctx.log.write(
        f"data currency {schema}.{table}: {dttm} (date {day.isoformat()})"
        + ("" if added else ", unchanged: not logged"),
        step=ctx.job_step,
    )
    return StepResult(0, output=dttm)


# ---------------------------------------------------------------------------- SQL


@guarded
async def execute_sql(ctx: StepContext) -> StepResult:
    """SQL (a file path, or inline) rendered with Jinja2 from the step args, statements in order."""
    from jinja2 import Environment, StrictUndefined, TemplateError

    from loadmgrd.targets import split_statements

    engine = _engine(ctx)
    text = ctx.command
    candidate = ctx.command.strip()
    if "\n" not in candidate and candidate.lower().endswith(".sql"):
        path = Path(ctx.expand(candidate))
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StepFailure(f"cannot read SQL file {path}: {exc}") from None
    try:
        rendered = (
            Environment(undefined=StrictUndefined, keep_trailing_newline=True).from_string(text).render(**ctx.args)
        )
    except TemplateError as exc:
        raise StepFailure(f"SQL template error: {exc}") from None
    statements = split_statements(rendered)
    if not statements:
        raise StepFailure("no SQL statement to run")
    target = engine.databases.resolve(ctx.args.get("target"))
    results = await engine.databases.script(target, statements)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    row_total = 0
    for _columns, rows in results:
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
            row_total += 1
    ctx.log.write(
        f"{len(statements)} statement(s) ran on target {target}; {row_total} row(s) returned", step=ctx.job_step
    )
    return StepResult(0, output=buffer.getvalue().strip() if ctx.capture else None)


# ---------------------------------------------------------------------------- files


def _open(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed for .gz, .bz2 and .xz."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def count_records(path: Path) -> int:
    """Lines in a plain or compressed file (a last line without a newline counts)."""
    count = 0
    last = b"\n"
    with _open(path) as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


def date_from_name(name: str, date_format: str) -> str | None:
    """The date in a file name, by a pattern such as ``yyyyMMdd`` (or strftime ``%Y%m%d``)."""
    pattern, fmt = date_format, date_format
    if "%" not in date_format:
        fmt = re.escape(date_format)
        regex = fmt
        for token, directive, digits in _JAVA_TOKENS:
            regex = regex.replace(token, f"(?:{digits})")
            fmt = fmt.replace(token, directive)
        pattern = regex
        fmt = fmt.replace("\\", "")
    else:
        pattern = re.escape(date_format)
        for directive, digits in (
            ("%Y", r"\d{4}"),
            ("%y", r"\d{2}"),
            ("%m", r"\d{2}"),
            ("%d", r"\d{2}"),
            ("%H", r"\d{2}"),
            ("%M", r"\d{2}"),
            ("%S", r"\d{2}"),
        ):
            pattern = pattern.replace(re.escape(directive), f"(?:{digits})")
    match = re.search(pattern, name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(0), fmt).strftime("%Y-%m-%d")
    except ValueError:
        return None


async def _running_entry(ctx: StepContext, name: str) -> dict[str, Any]:
    latest = await _engine(ctx).repo.latest_process_log(name)
    if latest is None or latest["status"] != ProcessLogStatus.RUNNING:
        raise StepFailure(f"process {name!r} has no running log entry (run start_process {name} first)")
    return latest


@guarded
async def file_record_count(ctx: StepContext) -> StepResult:
    """Count the records of the files matching FILE_MASK in STAGE_DIR and log them for PROCESS."""
    process, stage_dir, mask = _words(ctx, 3, "PROCESS STAGE_DIR FILE_MASK")
    entry = await _running_entry(ctx, process)
    directory = Path(ctx.expand(stage_dir))
    files = sorted(p for p in (Path(f) for f in glob.glob(str(directory / mask))) if p.is_file())
    date_format = ctx.args.get("date_format", "")
    logged = []
    total = 0
    for path in files:
        try:
            records = await asyncio.to_thread(count_records, path)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            raise StepFailure(f"cannot read {path}: {exc}") from None
        total += records
        logged.append(
            {
                "file_name": str(path),
                "record_count": records,
                "file_size": path.stat().st_size,
                "file_type": ctx.args.get("file_type") or None,
                "file_date": date_from_name(path.name, date_format) if date_format else None,
            }
        )
        ctx.log.write(f"{path}: {records} records", step=ctx.job_step)
    if logged:
        await _engine(ctx).repo.add_file_log(entry["process_log_key"], logged)
    ctx.log.write(f"{len(files)} file(s) matching {mask} in {directory}: {total} records", step=ctx.job_step)
    return StepResult(0, output=str(total))


@guarded
async def create_done_file(ctx: StepContext) -> StepResult:
    """Write the files already loaded for PROCESS (its latest log entry) to DONE_FILE."""
    process, done_file = _words(ctx, 2, "PROCESS DONE_FILE")
    latest = await _engine(ctx).repo.latest_process_log(process)
    if latest is None:
        raise StepFailure(f"process {process!r} has no log entry")
    files = await _engine(ctx).repo.file_log(latest["process_log_key"])
    path = Path(ctx.expand(done_file))
    lines = "".join(f"{f['file_name']},{f['record_count']},{f['file_date'] or ''}\n" for f in files)

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(lines, encoding="utf-8")
        os.replace(temporary, path)

    try:
        await asyncio.to_thread(write)
    except OSError as exc:
        raise StepFailure(f"cannot write {path}: {exc.strerror}") from None
    ctx.log.write(f"{path}: {len(files)} file(s) of batch {latest['batch_nbr']}", step=ctx.job_step)
    return StepResult(0, output=str(len(files)))


@guarded
async def hdfs_file_stage(ctx: StepContext) -> StepResult:
    """Empty HDFS_DIR, then put the files matching FILE_MASK in STAGE_DIR there (``hdfs dfs``)."""
    stage_dir, mask, hdfs_dir = _words(ctx, 3, "STAGE_DIR FILE_MASK HDFS_DIR")
    hdfs = shutil.which("hdfs", path=ctx.env.get("PATH"))
    if hdfs is None:
        raise StepFailure("the hdfs command is not on PATH")
    directory = Path(ctx.expand(stage_dir))
    files = sorted(str(p) for p in (Path(f) for f in glob.glob(str(directory / mask))) if p.is_file())
    target = hdfs_dir.rstrip("/") or "/"
    await _run(ctx, [hdfs, "dfs", "-mkdir", "-p", target])
    await _run(ctx, [hdfs, "dfs", "-rm", "-r", "-f", "-skipTrash", f"{target}/*"])
    if files:
        await _run(ctx, [hdfs, "dfs", "-put", "-f", *files, target])
    ctx.log.write(f"{len(files)} file(s) staged to {target}", step=ctx.job_step)
    return StepResult(0, output=str(len(files)))


async def _run(ctx: StepContext, argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=ctx.env,
        start_new_session=True,
    )
    ctx.process_groups.add(proc.pid)
    try:
        out, _ = await proc.communicate()
    finally:
        ctx.process_groups.discard(proc.pid)
    for line in out.decode("utf-8", errors="replace").splitlines():
        ctx.log.write(line, step=ctx.job_step)
    if proc.returncode != 0:
        raise StepFailure(f"{' '.join(argv[1:4])} … exited with {proc.returncode}")
