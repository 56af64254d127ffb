"""Helpers shared by the acceptance tests: job files, raw requests and waits against a real
loadmgrd (``tests.conftest.Daemon``), client results, step process groups, and ``Gate`` steps.

The ``gate`` and ``groups_to_kill`` fixtures built on these live in tests/acceptance/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Daemon, make_daemon

WAIT_TIMEOUT = 30.0  # upper bound for any state we wait for; normally reached in well under a second
POLL = 0.02  # only where no event exists (marker files, /proc, the schedule list, log lines)

# The columns of a CSV job file, in file order. A step has the first seven; the wait-step columns
# are written only when a step of the file has them.
COLUMNS = (
    "job_step",
    "job_step_description",
    "job_step_function",
    "job_step_command",
    "job_step_args",
    "job_step_ignore_error",
    "job_step_capture_output",
    "job_step_wait_step",
    "job_step_alt_wait_step",
)

q = shlex.quote


# ---------------------------------------------------------------------------- job files


def step(
    number: int,
    command: str,
    *,
    function: str = "run_command",
    args: str = "",
    ignore_error: bool = False,
    capture: bool = False,
    description: str = "",
    wait: int | None = None,
    alt_wait: int | None = None,
) -> dict[str, Any]:
    """One step of a CSV job file; the wait-step columns only if ``wait`` or ``alt_wait`` is given."""
    row: dict[str, Any] = {
        "job_step": number,
        "job_step_description": description,
        "job_step_function": function,
        "job_step_command": command,
        "job_step_args": args,
        "job_step_ignore_error": ignore_error,
        "job_step_capture_output": capture,
    }
    if wait is not None or alt_wait is not None:
        row["job_step_wait_step"] = wait or 0
        row["job_step_alt_wait_step"] = alt_wait or 0
    return row


def csv_field(value: Any) -> str:
    """A CSV job-file field: a backslash makes the delimiter, a quote or a backslash literal."""
    text = ("True" if value else "False") if isinstance(value, bool) else str(value)
    return "".join("\\" + ch if ch in (",", '"', "\\") else ch for ch in text)


def job_file_text(steps: list[dict[str, Any]]) -> str:
    """The CSV job file of ``steps``: the COLUMNS any of them has (a step without a wait-step column: 0)."""
    columns = [c for c in COLUMNS if any(c in s for s in steps)]
    rows = [",".join(columns)] + [",".join(csv_field(s.get(c, 0)) for c in columns) for s in steps]
    return "\n".join(rows) + "\n"


def write_job_file(path: Path, steps: list[dict[str, Any]]) -> Path:
    path.write_text(job_file_text(steps))
    return path


def import_job(
    d: Daemon, tmp_path: Path, name: str, steps: list[dict[str, Any]], *, group: str | None = None, raw: bool = False
) -> Path:
    """Write TMP_PATH/NAME.csv and import it as job NAME (in ``group``); the file.

    Through the real client (``job import``), or with ``raw`` over a raw request (what ``job import``
    sends; a client process per job would cost more than the tests themselves), which must create the job.
    """
    path = write_job_file(tmp_path / f"{name}.csv", steps)
    if not raw:
        d.ok("job", "import", *(["-g", group] if group else []), name, str(path))
        return path
    params: dict[str, Any] = {"job": name, "file_name": str(path), "content": path.read_text()}
    if group is not None:
        params["group"] = group
    assert call(d, "job.import", params)["outcome"] == "created"
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------- daemon state


def call(d: Daemon, method: str, params: dict[str, Any] | None = None) -> Any:
    """A raw request that must succeed; its result."""
    reply = d.rpc(method, params or {})
    assert "result" in reply, f"{method} {params} failed: {reply}\n{d.log()[-3000:]}"
    return reply["result"]


def status_of(d: Daemon, job: str) -> dict[str, Any]:
    return call(d, "status", {"job": job})


def stays(d: Daemon, job: str, status: str, seconds: float) -> None:
    """Assert the job's run stays in ``status`` for ``seconds``, following every change (``watch``)."""
    deadline = time.monotonic() + seconds
    since = -1
    while (remaining := deadline - time.monotonic()) > 0:
        result = call(d, "watch", {"names": [job], "since": since, "wait": remaining})
        assert result["runs"][0]["status"] == status, f"job {job} left {status}: {status_of(d, job)}"
        since = result["version"]


def current_run(d: Daemon, job: str) -> dict[str, Any]:
    run = status_of(d, job)["run"]
    assert run is not None, f"job {job} has no run"
    return dict(run)


def by_step(run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {s["job_step"]: s for s in run["steps"]}


def wait_for_status(d: Daemon, job: str, *statuses: str, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
    """Follow the job with the ``watch`` long poll until its run is in one of ``statuses``; its ``watch`` row."""
    deadline = time.monotonic() + timeout
    since = -1
    while True:
        result = call(d, "watch", {"names": [job], "since": since, "wait": 5.0})
        row = result["runs"][0]
        if row["status"] in statuses:
            return dict(row)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job} still {row['status']} after {timeout} s (wanted {statuses}): {status_of(d, job)}"
            )
        since = result["version"]


def wait_for_path(path: Path, d: Daemon, job: str, timeout: float = WAIT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s; job {job}: {status_of(d, job)}")
        time.sleep(POLL)


# ---------------------------------------------------------------------------- client results


def assert_exit(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, (
        f"exit {result.returncode}, wanted {code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )


def assert_refused(result: subprocess.CompletedProcess[str], *words: str, strict: bool = False) -> None:
    """The client refused, saying every one of ``words`` (any case) on stderr; ``strict``: with exit
    code 1 exactly, and no traceback."""
    if strict:
        assert_exit(result, 1)
    else:
        assert result.returncode != 0, f"accepted: {result.stdout}{result.stderr}"
    for word in words:
        assert word.lower() in result.stderr.lower(), f"{word!r} not in: {result.stderr}"
    if strict:
        assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- processes


def live_group_members(pgid: int) -> list[int]:
    """Processes (not zombies) whose process group (field 5 of /proc/PID/stat) is ``pgid``.

    Zombies are excluded: they are dead, and in this sandbox PID 1 does not reap orphans."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def wait_group_gone(pgid: int, timeout: float) -> list[int]:
    """The group's live members once it is empty, or whatever is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (members := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(POLL)
    return members


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Gate:
    """A step command that records its process group, says it has started, and blocks until opened."""

    directory: Path
    name: str

    @property
    def mark(self) -> Path:
        return self.directory / f"{self.name}.started"

    @property
    def release(self) -> Path:
        return self.directory / f"{self.name}.release"

    @property
    def pgid_file(self) -> Path:
        return self.directory / f"{self.name}.pgid"

    def command(self) -> str:
        return (
            f"echo $$ > {q(str(self.pgid_file))}; touch {q(str(self.mark))}; "
            f"while [ ! -f {q(str(self.release))} ]; do sleep 0.05; done"
        )

    def wait_started(self, d: Daemon, job: str) -> int:
        """Wait until the step really runs; its process group id."""
        wait_for_path(self.mark, d, job)
        return int(self.pgid_file.read_text())

    def open(self) -> None:
        self.release.touch()


# ---------------------------------------------------------------------------- configuration


@contextlib.contextmanager
def configured_daemon(sections: str = "", daemon_keys: dict[str, str] | None = None) -> Iterator[Daemon]:
    """A daemon of its own with these config sections (and [daemon] keys), started; stopped and
    removed afterwards."""
    d = make_daemon()
    try:
        configure(d, daemon_keys=daemon_keys, sections=sections)
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def configure(
    d: Daemon, *, daemon_keys: dict[str, str] | None = None, sections: str = "", blank_line: bool = True
) -> None:
    """Add keys to the existing [daemon] section and whole new sections at the end of the config
    (after a blank line unless ``blank_line`` is false)."""
    out = []
    for line in d.config_file.read_text().splitlines():
        out.append(line)
        if line.strip() == "[daemon]":
            out += [f"{key} = {value}" for key, value in (daemon_keys or {}).items()]
    d.config_file.write_text("\n".join(out) + ("\n\n" if blank_line else "\n") + sections)
