"""A run's log file: one line per output line, timestamped, buffered and flushed in batches."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import IO

FLUSH_DELAY = 0.2
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def new_log_file(location: Path, prefix: str, extension: str, date_format: str, job: str, started: datetime) -> Path:
    """Create a new run's log file, ``LOCATION/PREFIX<job>_<start>EXTENSION``, and return its path.

    The job name is made file-name safe, so no name can place a log outside the configured
    location. The file is created exclusively: a name already taken (two runs of a job in one
    second, two job names made safe alike) gets ``_2``, ``_3``… before the extension, so a run
    never shares its log with another."""
    safe_job = _UNSAFE.sub("_", job).lstrip(".") or "job"
    stamp = _UNSAFE.sub("_", started.strftime(date_format))
    base = f"{prefix}{safe_job}_{stamp}"
    location.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = location / (f"{base}{extension}" if n == 1 else f"{base}_{n}{extension}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return path


class RunLog:
    """Appends ``YYYY-MM-DD HH:MM:SS.mmm LEVEL [step N] text`` lines; followers wait on ``changed``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(path, "a", encoding="utf-8", errors="replace", buffering=65536)  # noqa: SIM115
        os.chmod(path, 0o640)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._second = -1
        self._second_text = ""

    def write(self, text: str, *, step: int | None = None, level: str = "INFO") -> None:
        if self._file is None:
            return
        moment = time.time()
        second = int(moment)
        if second != self._second:  # the date and time text changes once a second: format it then
            self._second, self._second_text = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        now = f"{self._second_text}.{int((moment - second) * 1000):03d}"
        where = f" [step {step}]" if step is not None else ""
        for line in text.splitlines() or [""]:
            self._file.write(f"{now} {level:<7}{where} {line}\n")
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._file is not None:
            self._file.flush()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def reopen(self) -> None:
        """Continue in a fresh file at the same path (logrotate moved the old one away)."""
        if self._file is None:
            return
        self.flush()
        self._file.close()
        self._file = open(self.path, "a", encoding="utf-8", errors="replace", buffering=65536)  # noqa: SIM115
        os.chmod(self.path, 0o640)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
